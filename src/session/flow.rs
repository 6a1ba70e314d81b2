//! Flow control inside one session: reading stops while the session owes its client too many
//! bytes, or holds questions it has not asked yet, and resumes when neither is the case.
//!
//! The session reports what it owes (see the memory bound in [`crate::session`]) to its
//! [`Flow`]. The stream of its client's questions is registered on its context with
//! [`add_gated_stream`]: like actix's `add_stream`, each item goes to the actor's
//! `StreamHandler`, but the stream is not polled while the actor's `Flow` says reading is paused,
//! and the actor's task is woken when it may read again. Reading resumes only once what is owed
//! is back under half the mark, so a client reading slowly does not flip reading on and off at
//! every answer. Everything lives on the session's thread, so plain `Cell`s suffice.

use std::{
    cell::Cell,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use actix::{Actor, AsyncContext, SpawnHandle, StreamHandler, fut::ActorFuture};
use futures_core::Stream;

/// Whether a session may read.
#[derive(Default)]
pub struct Flow {
    paused: Cell<bool>,
    reader: Cell<Option<Waker>>,
}

impl Flow {
    /// Reports the bytes owed, whether questions read are held back unasked, and the mark
    /// (`limits.max_pending_bytes`, which a reload may change): owing more than the mark, or
    /// holding questions, pauses reading; owing at most half the mark and holding none resumes
    /// it.
    pub fn set_owed(&self, owed: usize, holding_questions: bool, high_water: usize) {
        if owed > high_water || holding_questions {
            self.paused.set(true);
        } else if self.paused.get() && owed <= high_water / 2 {
            self.paused.set(false);
            if let Some(waker) = self.reader.take() {
                waker.wake();
            }
        }
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Whether the reader may read now; if not, `reader` is woken when it may.
    fn may_read(&self, reader: &Waker) -> bool {
        if self.is_paused() {
            self.reader.set(Some(reader.clone()));
            return false;
        }
        true
    }
}

/// An actor whose reading its [`Flow`] controls.
pub trait FlowControlled: Actor {
    /// The actor's flow control.
    fn flow(&self) -> &Flow;
}

/// Registers `stream` on the actor's context, its items handled by the actor's
/// `StreamHandler` as with actix's `add_stream`, polled only while the actor's [`Flow`]
/// allows; returns the handle that cancels it.
pub fn add_gated_stream<A, S>(stream: S, ctx: &mut actix::Context<A>) -> SpawnHandle
where
    A: FlowControlled<Context = actix::Context<A>> + StreamHandler<S::Item>,
    S: Stream + Unpin + 'static,
{
    ctx.spawn(GatedStream { stream, started: false })
}

/// Items handled in a row at most, before the stream lets the context's other items run (as
/// actix's own streams do).
const ITEMS_PER_POLL: usize = 16;

/// A stream registered with [`add_gated_stream`].
struct GatedStream<S> {
    stream: S,
    started: bool,
}

impl<A, S> ActorFuture<A> for GatedStream<S>
where
    A: FlowControlled + StreamHandler<S::Item>,
    A::Context: AsyncContext<A>,
    S: Stream + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, act: &mut A, ctx: &mut A::Context, task: &mut Context<'_>) -> Poll<()> {
        if !self.started {
            self.started = true;
            <A as StreamHandler<S::Item>>::started(act, ctx);
        }
        for _ in 0..ITEMS_PER_POLL {
            if !act.flow().may_read(task.waker()) {
                return Poll::Pending;
            }
            match Pin::new(&mut self.stream).poll_next(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(item)) => {
                    <A as StreamHandler<S::Item>>::handle(act, item, ctx);
                    if ctx.waiting() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(None) => {
                    <A as StreamHandler<S::Item>>::finished(act, ctx);
                    return Poll::Ready(());
                }
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        rc::Rc,
        sync::{Arc, atomic::Ordering},
    };

    use actix::prelude::*;
    use tokio::sync::mpsc;

    use super::*;
    use crate::inbox::tests::CountWakes;

    #[test]
    fn owing_more_than_the_mark_pauses_and_owing_half_resumes_with_a_wake() {
        let flow = Flow::default();
        let wakes = Arc::new(CountWakes(0.into()));
        let waker = Waker::from(wakes.clone());
        flow.set_owed(100, false, 100);
        assert!(flow.may_read(&waker), "at the mark is not above it");
        flow.set_owed(101, false, 100);
        assert!(!flow.may_read(&waker));
        flow.set_owed(51, false, 100);
        assert!(flow.is_paused(), "51 is above half the mark");
        flow.set_owed(50, false, 100);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken to read again");
        assert!(flow.may_read(&waker));
    }

    #[test]
    fn held_questions_pause_reading_whatever_is_owed() {
        let flow = Flow::default();
        flow.set_owed(0, true, 10);
        assert!(flow.is_paused());
        flow.set_owed(0, false, 10);
        assert!(!flow.is_paused());
    }

    /// Takes numbers from a gated stream, and notes the end of the stream as 0.
    struct Taker {
        flow: Flow,
        taken: Rc<RefCell<Vec<u32>>>,
    }

    impl Actor for Taker {
        type Context = actix::Context<Self>;
    }

    impl FlowControlled for Taker {
        fn flow(&self) -> &Flow {
            &self.flow
        }
    }

    impl StreamHandler<u32> for Taker {
        fn handle(&mut self, item: u32, _: &mut Self::Context) {
            self.taken.borrow_mut().push(item);
        }

        fn finished(&mut self, _: &mut Self::Context) {
            self.taken.borrow_mut().push(0);
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Owe(usize);

    impl Handler<Owe> for Taker {
        type Result = ();

        fn handle(&mut self, Owe(bytes): Owe, _: &mut Self::Context) {
            self.flow.set_owed(bytes, false, 10);
        }
    }

    /// A stream of what is sent to it, ending when its sender is dropped.
    struct Numbers(mpsc::UnboundedReceiver<u32>);

    impl Stream for Numbers {
        type Item = u32;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<u32>> {
            self.0.poll_recv(cx)
        }
    }

    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[actix::test]
    async fn a_gated_stream_goes_to_the_stream_handler_only_while_its_actor_may_read() {
        let (numbers, received) = mpsc::unbounded_channel();
        let taken = Rc::default();
        let taker = Taker::create(|ctx| {
            add_gated_stream(Numbers(received), ctx);
            Taker { flow: Flow::default(), taken: Rc::clone(&taken) }
        });
        numbers.send(1).unwrap();
        settle().await;
        taker.send(Owe(11)).await.unwrap();
        numbers.send(2).unwrap();
        settle().await;
        assert_eq!(*taken.borrow(), [1], "read while paused");
        taker.send(Owe(5)).await.unwrap();
        settle().await;
        assert_eq!(*taken.borrow(), [1, 2], "not read again once resumed");
        drop(numbers);
        settle().await;
        assert_eq!(*taken.borrow(), [1, 2, 0], "the end of the stream goes to `finished`");
    }
}
