//! Heap allocations per transaction on the relay's hot path, counted with a counting global
//! allocator: simple `SELECT 1` queries, simple queries whose literal changes every time (as
//! pgbench -S sends them), and unnamed Parse/Bind/Execute/Sync batches, through
//! an in-process sidecar (`tokio::io::duplex` client) to the scripted server of the tests; the
//! same loop straight to the scripted server is counted too and subtracted, so what remains is
//! the sidecar's own. `cargo bench --bench allocations`.

#[path = "../tests/scripted/mod.rs"]
mod scripted;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgsidecar::config::{Config, Overrides};
use pgsidecar::protocol::frame::try_frame;
use pgsidecar::stream::Stream;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Transactions counted per kind (`ALLOCATION_ROUNDS` overrides, e.g. under a profiler).
fn rounds() -> u64 {
    std::env::var("ALLOCATION_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000)
}

/// Reads until `readies` ReadyForQuery messages arrived.
async fn until_ready<S: AsyncRead + Unpin>(conn: &mut S, buf: &mut BytesMut, readies: usize) {
    let mut seen = 0;
    loop {
        while let Some(frame) = try_frame(buf, 1 << 20).unwrap() {
            if frame.tag() == b'Z' {
                seen += 1;
                if seen == readies {
                    return;
                }
            }
        }
        assert!(conn.read_buf(buf).await.unwrap() > 0, "closed");
    }
}

/// Allocations per round of `request` (the i-th round's bytes; after a warm-up), the client's
/// own included.
async fn per_round<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, request: &Request) -> f64 {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for i in 0..1000 {
        conn.write_all(&request(i)).await.unwrap();
        until_ready(conn, &mut buf, 1).await;
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let rounds = rounds();
    for i in 0..rounds {
        conn.write_all(&request(i)).await.unwrap();
        until_ready(conn, &mut buf, 1).await;
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / rounds as f64
}

/// The bytes of a transaction's request, by round.
type Request = Box<dyn Fn(u64) -> BytesMut>;

fn requests() -> [(&'static str, Request); 3] {
    let mut simple = BytesMut::new();
    frontend::query("SELECT 1", &mut simple).unwrap();
    // As pgbench -S sends it: the same statement with another literal each time.
    let varying = |i: u64| {
        let mut out = BytesMut::new();
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};");
        frontend::query(&sql, &mut out).unwrap();
        out
    };
    let mut extended = BytesMut::new();
    frontend::parse("", "SELECT 1", [], &mut extended).unwrap();
    frontend::bind(
        "",
        "",
        [],
        [] as [Option<&str>; 0],
        |_, _: &mut BytesMut| Ok(postgres_protocol::IsNull::No),
        [],
        &mut extended,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut extended).unwrap();
    frontend::sync(&mut extended);
    [
        ("simple query", Box::new(move |_| simple.clone())),
        ("simple, new literal", Box::new(varying)),
        ("extended P/B/E/S", Box::new(move |_| extended.clone())),
    ]
}

fn startup() -> BytesMut {
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "bench"), ("database", "bench")], &mut out).unwrap();
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = scripted::start().await;
        // Straight to the scripted server: its own and the client's allocations.
        let mut direct = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        direct.set_nodelay(true).unwrap();
        direct.write_all(&startup()).await.unwrap();
        until_ready(&mut direct, &mut BytesMut::new(), 1).await;
        let mut baseline = Vec::new();
        for (_, request) in requests() {
            baseline.push(per_round(&mut direct, &request).await);
        }

        let toml = format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[pool]\nsize = 2\n\
             [[database]]\nname = \"bench\"\nprimary = \"postgres://bench:x@127.0.0.1:{}/bench\"\n\
             [[user]]\nname = \"bench\"\nauth = \"trust\"\n",
            server.addr.port()
        );
        let config = Config::from_toml(&toml, &Overrides::default()).unwrap();
        let app = pgsidecar::app::App::new(config).unwrap();
        let (mut client, side) = tokio::io::duplex(64 * 1024);
        tokio::spawn(pgsidecar::session::serve_stream(
            Arc::clone(&app),
            Stream::Memory(side),
            true,
        ));
        client.write_all(&startup()).await.unwrap();
        until_ready(&mut client, &mut BytesMut::new(), 1).await;
        for ((name, request), base) in requests().into_iter().zip(baseline) {
            let through = per_round(&mut client, &request).await;
            println!(
                "{name:<19} allocations per transaction: sidecar {:6.2}  (through it {through:.2}, scripted server and client alone {base:.2})",
                through - base
            );
        }
        let mut bye = BytesMut::new();
        bye.put_u8(b'X');
        bye.put_i32(4);
        let _ = client.write_all(&bye).await;
    });
}
