//! A future that is polled again only after it asked to be woken. The pump's `select!` polls
//! every branch on every turn; the end-of-session future (a cancellation token's) takes a lock
//! on each poll although it fires once per session at most. Wrapped, a turn it did not wake
//! costs an atomic swap and a waker registration.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Whether the inner future woke, and the task to wake.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `inner`, polled only on its first turn and after it woke.
pub(super) struct Woken<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Flag>,
    /// The waker handed to `inner` (made once).
    waker: Waker,
}

impl<F: Future> Woken<F> {
    pub(super) fn new(inner: F) -> Woken<F> {
        let flag = Arc::new(Flag::default());
        // The first poll polls the inner future, which registers its waker.
        flag.woken.store(true, Ordering::Relaxed);
        Woken {
            inner: Box::pin(inner),
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake in between wakes this task again.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn poll_once<F: Future>(woken: &mut Woken<F>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(woken).poll(&mut cx).is_ready()
    }

    #[test]
    fn fires_when_the_inner_future_does() {
        let token = CancellationToken::new();
        let mut woken = Woken::new(token.clone().cancelled_owned());
        // Not ready: polled once, then left alone until it wakes.
        assert!(!poll_once(&mut woken));
        assert!(!poll_once(&mut woken));
        assert!(!woken.flag.woken.load(Ordering::Acquire));
        token.cancel();
        assert!(woken.flag.woken.load(Ordering::Acquire));
        assert!(poll_once(&mut woken));
        // Cancelled before the first poll: ready on it.
        let token = CancellationToken::new();
        token.cancel();
        let mut woken = Woken::new(token.cancelled_owned());
        assert!(poll_once(&mut woken));
    }
}
