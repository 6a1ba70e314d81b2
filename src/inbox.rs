//! [`Inbox`]: a mailbox for messages between actors on one thread.
//!
//! An actix mailbox takes messages from any thread: each message is boxed in an envelope,
//! queued in a node of its own and handed over with atomic operations; two allocations and a
//! few dozen atomic instructions per message. The questions a session asks its thread's oracle
//! replica, and the answers that come back, never leave that thread. An `Inbox` holds them in
//! a plain queue instead, which allocates only while it grows, and wakes the receiving actor's
//! task when a message arrives. An inbox is a stream of messages: the receiving actor registers
//! it on its context with `add_message_stream`, and handles each message, in the order sent,
//! with its `Handler` for that message type, as it would one from its actix mailbox
//! ([`start`]).
//!
//! A message sent to an inbox whose receiving half is gone comes back to its sender.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use actix::{Actor, AsyncContext, Handler, Message};
use futures_core::Stream;

/// The receiving half: owned by the actor the messages are for.
pub struct Inbox<M> {
    shared: Rc<Shared<M>>,
}

/// The sending half; cloning it costs a non-atomic increment.
pub struct Sender<M> {
    shared: Rc<Shared<M>>,
}

struct Shared<M> {
    queue: RefCell<Queue<M>>,
    /// The receiver's task, if it found the queue empty and waits.
    receiver: Cell<Option<Waker>>,
    /// The receiving half was dropped.
    closed: Cell<bool>,
}

/// Messages in the order sent. The first waits in a place of its own, so that a receiver that
/// takes each message before the next arrives (a session waiting for its answers, the usual
/// case) never allocates the queue behind it.
struct Queue<M> {
    first: Option<M>,
    rest: VecDeque<M>,
}

/// A new inbox and its first sender.
pub fn inbox<M>() -> (Sender<M>, Inbox<M>) {
    let inbox = Inbox::default();
    (inbox.sender(), inbox)
}

/// Starts `actor` on the current thread, handling the messages of a new inbox with its
/// `Handler<M>`; returns the inbox's sender.
pub fn start<A, M>(actor: A) -> Sender<M>
where
    A: Actor<Context = actix::Context<A>> + Handler<M>,
    M: Message + 'static,
{
    let (sender, inbox) = inbox();
    A::create(|ctx| {
        ctx.add_message_stream(inbox);
        actor
    });
    sender
}

impl<M> Sender<M> {
    /// Queues `message` and wakes the receiver if it waits.
    ///
    /// # Errors
    ///
    /// The message back when the receiving half is gone.
    pub fn send(&self, message: M) -> Result<(), M> {
        if self.shared.closed.get() {
            return Err(message);
        }
        let mut queue = self.shared.queue.borrow_mut();
        if queue.first.is_none() && queue.rest.is_empty() {
            queue.first = Some(message);
        } else {
            queue.rest.push_back(message);
        }
        drop(queue);
        if let Some(waker) = self.shared.receiver.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiving half is still there.
    pub fn is_connected(&self) -> bool {
        !self.shared.closed.get()
    }
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<M> Inbox<M> {
    /// A sender to this inbox.
    pub fn sender(&self) -> Sender<M> {
        Sender { shared: self.shared.clone() }
    }

    /// The next message, or `Pending` with the task's waker kept until one is sent.
    pub fn poll_recv(&self, cx: &Context<'_>) -> Poll<M> {
        let mut queue = self.shared.queue.borrow_mut();
        if let Some(message) = queue.first.take().or_else(|| queue.rest.pop_front()) {
            return Poll::Ready(message);
        }
        match self.shared.receiver.take() {
            Some(waker) if waker.will_wake(cx.waker()) => self.shared.receiver.set(Some(waker)),
            _ => self.shared.receiver.set(Some(cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// An empty inbox; [`Inbox::sender`] gives its senders.
impl<M> Default for Inbox<M> {
    fn default() -> Self {
        Self {
            shared: Rc::new(Shared {
                queue: RefCell::new(Queue { first: None, rest: VecDeque::new() }),
                receiver: Cell::new(None),
                closed: Cell::new(false),
            }),
        }
    }
}

impl<M> Drop for Inbox<M> {
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.shared.receiver.take();
        let mut queue = self.shared.queue.borrow_mut();
        queue.first = None;
        queue.rest = VecDeque::new();
    }
}

/// Never ends: a sender may always come.
impl<M> Stream for Inbox<M> {
    type Item = M;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        self.poll_recv(cx).map(Some)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    /// A waker that counts how many times it was woken (for the tests of whatever keeps one).
    pub(crate) struct CountWakes(pub(crate) AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn messages_come_out_in_the_order_sent_and_a_waiting_receiver_is_woken_once() {
        let (sender, inbox) = inbox();
        let wakes = Arc::new(CountWakes(0.into()));
        let waker = Waker::from(wakes.clone());
        let cx = Context::from_waker(&waker);
        assert_eq!(inbox.poll_recv(&cx), Poll::Pending);
        for message in 1..=3 {
            sender.send(message).unwrap();
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken by the first message only");
        assert_eq!(inbox.poll_recv(&cx), Poll::Ready(1));
        sender.send(4).unwrap();
        let received: Vec<_> = std::iter::from_fn(|| match inbox.poll_recv(&cx) {
            Poll::Ready(message) => Some(message),
            Poll::Pending => None,
        })
        .collect();
        assert_eq!(received, [2, 3, 4]);
        sender.clone().send(5).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "waiting again, woken again");
        assert_eq!(inbox.poll_recv(&cx), Poll::Ready(5));
    }

    #[test]
    fn a_message_for_a_receiver_gone_comes_back() {
        let (sender, inbox) = inbox();
        sender.send("kept until the receiver goes").unwrap();
        assert!(sender.is_connected());
        drop(inbox);
        assert!(!sender.is_connected());
        assert_eq!(sender.send("late"), Err("late"));
    }
}
