//! The client side of the wire: a first packet (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) and then framed messages, each decoded the way the sidecar decodes it.
//! Asserts: no panic; a decoded Bind encodes back to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsidecar::protocol::bind::Bind;
use pgsidecar::protocol::frame::try_frame;
use pgsidecar::protocol::frontend::{self, SaslInitialResponse};
use pgsidecar::protocol::startup::{packet_len, parse_first_packet, parse_options};

fuzz_target!(|data: &[u8]| {
    let rest = match data.get(..4).map(|h| packet_len([h[0], h[1], h[2], h[3]])) {
        Some(Ok(len)) if len <= data.len() => {
            if let Ok(pgsidecar::protocol::startup::FirstPacket::Startup(s)) =
                parse_first_packet(&data[4..len])
            {
                for (name, value) in &s.params {
                    if name == "options" {
                        let _ = parse_options(value);
                    }
                }
            }
            &data[len..]
        }
        _ => data,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(frame)) = try_frame(&mut buf, 1 << 20) {
        let body = frame.body();
        let _ = frontend::role(frame.tag());
        let well_formed = pgsidecar::protocol::grammar::well_formed(frame.tag(), body);
        match frame.tag() {
            frontend::QUERY_TAG => {
                let _ = frontend::query_text(body);
            }
            frontend::PARSE_TAG => {
                let _ = frontend::parse_text(body);
            }
            frontend::BIND_TAG => {
                assert_eq!(Bind::parse(body).is_some(), well_formed);
                if let Some(bind) = Bind::parse(body) {
                    assert_eq!(&bind.encode()[..], &frame.as_bytes()[..]);
                    for i in 0..bind.param_count() {
                        let _ = bind.param_int(i);
                        let _ = bind.param_str(i);
                        let _ = bind.param_uuid(i);
                        let _ = bind.int_like(i, 7);
                        let _ = bind.encode_replacing(i, b"7");
                    }
                }
            }
            b'p' => {
                let _ = SaslInitialResponse::parse(body);
                let _ = frontend::parse_password(body);
            }
            _ => {
                // Describe, Execute, Close: a kind byte or a name, then a C string.
                let _ = pgsidecar::protocol::frontend::split_cstr(body);
            }
        }
    }
});
