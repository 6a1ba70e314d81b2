//! [`AnswerQueue`]: a session's batches of questions in the order they were read, from read to
//! answered, so that answers leave in question order whatever order the oracle's replies come in.
//!
//! Its order is its own to keep, whatever the session does: batches asked sit in numbered slots,
//! the front of which is written next; questions read but not asked yet ([`AnswerQueue::push_questions`],
//! held back while the session owes its client too much) come after every slot, and the server's
//! own last answer ([`AnswerQueue::push_last_word`]) after everything, so neither can overtake nor
//! be overtaken. The queue also keeps the count of bytes its slots owe the client: a batch at the
//! oracle at its questions' bytes and longest possible answers, an answered one at its answers'.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::protocol::{Answer, Answers, Questions};

/// A session's questions and answers in question order.
#[derive(Debug)]
pub struct AnswerQueue {
    /// Batches asked or answered; the front is the next to be written.
    slots: VecDeque<Slot>,
    /// The number of the front slot; batch `seq` is in slot `seq - first_seq`.
    first_seq: u64,
    /// Questions read and not asked yet; they come after every slot.
    held: Option<Held>,
    /// The server's own last answer (a refusal, or saying it is shutting down); it comes last.
    last_word: Option<Answer>,
    /// Bytes owed in `slots`.
    owed: usize,
}

#[derive(Debug)]
struct Slot {
    /// When the batch's questions were read (for the latency metric); none for the last word.
    read_at: Option<Instant>,
    batch: Batch,
}

#[derive(Debug)]
enum Batch {
    /// At the oracle since `at`; counted as `owed` bytes until its answers come.
    Asked { owed: usize, at: Instant },
    /// Answered, waiting for the batches before it.
    Answered(Answers),
}

#[derive(Debug)]
struct Held {
    read_at: Instant,
    questions: Questions,
}

impl Default for AnswerQueue {
    /// An empty queue, with room for one batch (not the four a first push would make): a client
    /// asking one question at a time needs no more, and an idle connection keeps it.
    fn default() -> Self {
        Self { slots: VecDeque::with_capacity(1), first_seq: 0, held: None, last_word: None, owed: 0 }
    }
}

impl AnswerQueue {
    /// Whether nothing is waiting: no batch asked or answered, no question held, no last word.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.held.is_none() && self.last_word.is_none()
    }

    /// Bytes owed to the client by the batches asked and answered.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Since when the oldest batch still at the oracle has been there, if one is.
    pub fn at_oracle_since(&self) -> Option<Instant> {
        self.slots.iter().find_map(|slot| match slot.batch {
            Batch::Asked { at, .. } => Some(at),
            Batch::Answered(_) => None,
        })
    }

    /// Whether questions read wait to be asked.
    pub fn holds_questions(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the server's last word waits in the queue: until it is written, the queue takes
    /// no more questions (after it, the session takes none either: it is closing).
    pub fn has_last_word(&self) -> bool {
        self.last_word.is_some() || self.slots.back().is_some_and(|slot| slot.read_at.is_none())
    }

    /// Questions read at `read_at`, to be asked after every question before them
    /// ([`AnswerQueue::next_to_ask`]); none is taken while the last word waits.
    pub fn push_questions(&mut self, read_at: Instant, questions: Questions) {
        if questions.is_empty() || self.has_last_word() {
            return;
        }
        self.held = Some(match self.held.take() {
            None => Held { read_at, questions },
            // Questions read while others wait: after them, counted from when the first came.
            Some(Held { read_at, questions: first }) => Held { read_at, questions: first.followed_by(&questions) },
        });
    }

    /// The server's own last answer, to be written after everything before it.
    pub fn push_last_word(&mut self, answer: Answer) {
        if !self.has_last_word() {
            self.last_word = Some(answer);
            self.settle_last_word();
        }
    }

    /// The next batch to ask, at `now`, and its number: the questions held, as many as fit in
    /// `room` bytes when each costs its own bytes plus `per_question` (with `at_least_one`, the
    /// first whatever it costs), given a slot counted at that cost; `None` if nothing waits or
    /// nothing fits.
    pub fn next_to_ask(
        &mut self,
        now: Instant,
        room: usize,
        per_question: usize,
        at_least_one: bool,
    ) -> Option<(u64, Questions)> {
        let held = self.held.as_mut()?;
        let read_at = held.read_at;
        let (questions, cost) = held.questions.take_within(room, per_question, at_least_one)?;
        if held.questions.is_empty() {
            self.held = None;
        }
        let seq = self.first_seq + self.slots.len() as u64;
        self.slots.push_back(Slot { read_at: Some(read_at), batch: Batch::Asked { owed: cost, at: now } });
        self.owed += cost;
        self.settle_last_word();
        Some((seq, questions))
    }

    /// Fills batch `seq`'s slot with its answers; `false` if no batch of that number is at the
    /// oracle (it was answered already, or never asked).
    pub fn fill(&mut self, seq: u64, answers: Answers) -> bool {
        let Some(slot) = seq.checked_sub(self.first_seq).and_then(|index| self.slots.get_mut(index as usize)) else {
            return false;
        };
        let Batch::Asked { owed, .. } = slot.batch else { return false };
        self.owed = self.owed - owed + answers.as_bytes().len();
        slot.batch = Batch::Answered(answers);
        true
    }

    /// The answers at the front, if they are in, with when their questions were read.
    pub fn pop_answered(&mut self) -> Option<(Option<Instant>, Answers)> {
        if !matches!(self.slots.front(), Some(Slot { batch: Batch::Answered(_), .. })) {
            return None;
        }
        let Slot { read_at, batch: Batch::Answered(answers) } = self.slots.pop_front()? else { return None };
        self.first_seq += 1;
        self.owed -= answers.as_bytes().len();
        Some((read_at, answers))
    }

    /// Gives the last word a slot of its own once no question is held before it.
    fn settle_last_word(&mut self) {
        if self.held.is_none()
            && let Some(answer) = self.last_word.take()
        {
            self.owed += answer.as_bytes().len();
            self.slots.push_back(Slot { read_at: None, batch: Batch::Answered(Answers::single(&answer)) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn questions(list: &[&'static [u8]]) -> Questions {
        Questions::from_list(list.iter().copied())
    }

    fn answers(text: &'static [u8]) -> Answers {
        Answers::single(&Answer::from_static(text))
    }

    /// Every answer ready at the front, as text.
    fn written(queue: &mut AnswerQueue) -> String {
        std::iter::from_fn(|| queue.pop_answered())
            .map(|(_, a)| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn answers_leave_in_question_order_whatever_order_they_come_in() {
        let mut queue = AnswerQueue::default();
        let now = Instant::now();
        let mut asked = Vec::new();
        for question in [&b"a?"[..], b"b?", b"c?"] {
            queue.push_questions(now, questions(&[question]));
            asked.push(queue.next_to_ask(now, usize::MAX, 10, false).unwrap().0);
        }
        assert_eq!(asked, [0, 1, 2]);
        assert!(queue.fill(2, answers(b"C.")));
        assert_eq!(written(&mut queue), "", "the third answer waits for the first two");
        assert!(queue.fill(0, answers(b"A.")));
        assert_eq!(written(&mut queue), "A.");
        assert!(!queue.fill(0, answers(b"A.")), "a batch is answered once");
        assert!(queue.fill(1, answers(b"B.")));
        assert_eq!(written(&mut queue), "B.C.");
        assert!(queue.is_empty());
        assert_eq!(queue.owed(), 0);
    }

    #[test]
    fn questions_held_are_asked_as_far_as_the_room_goes_and_owed_counts_them_at_their_bound() {
        let mut queue = AnswerQueue::default();
        let now = Instant::now();
        queue.push_questions(now, questions(&[b"a?", b"b?", b"c?"]));
        // Each costs 2 bytes of question and 10 of answer: 25 bytes hold two.
        let (seq, first) = queue.next_to_ask(now, 25, 10, false).unwrap();
        assert_eq!((seq, first.len(), queue.owed()), (0, 2, 24));
        assert!(queue.holds_questions());
        assert!(queue.next_to_ask(now, 11, 10, false).is_none(), "the third does not fit in 11 bytes");
        assert!(queue.next_to_ask(now, 0, 10, true).is_some(), "one at least, when told so");
        assert!(!queue.holds_questions());
        assert!(queue.fill(0, answers(b"AB.")));
        assert_eq!(queue.owed(), 3 + 12, "answered at their length, the rest at their bound");
    }

    #[test]
    fn the_last_word_comes_after_every_question_read_before_it_and_closes_the_queue() {
        let mut queue = AnswerQueue::default();
        let now = Instant::now();
        queue.push_questions(now, questions(&[b"a?"]));
        let (first, _) = queue.next_to_ask(now, usize::MAX, 10, false).unwrap();
        queue.push_questions(now, questions(&[b"b?"]));
        queue.push_last_word(Answer::QUESTION_TOO_LONG);
        assert!(queue.has_last_word());
        queue.push_questions(now, questions(&[b"late?"]));
        let (second, late) = queue.next_to_ask(now, usize::MAX, 10, false).unwrap();
        assert_eq!(late.len(), 1, "nothing is taken after the last word");
        assert!(queue.next_to_ask(now, usize::MAX, 10, false).is_none());
        assert!(queue.fill(second, answers(b"B.")));
        assert_eq!(written(&mut queue), "", "all wait for the first");
        assert!(queue.fill(first, answers(b"A.")));
        assert_eq!(written(&mut queue), "A.B.Error: question too long.");
        assert!(queue.is_empty());
    }

    #[test]
    fn questions_read_while_others_are_held_wait_behind_them() {
        let mut queue = AnswerQueue::default();
        let now = Instant::now();
        queue.push_questions(now, questions(&[b"a?", b"b?"]));
        queue.push_questions(now, questions(&[b"c?"]));
        let (_, batch) = queue.next_to_ask(now, usize::MAX, 0, false).unwrap();
        assert_eq!(format!("{batch:?}"), r#"["a?", "b?", "c?"]"#);
    }
}
