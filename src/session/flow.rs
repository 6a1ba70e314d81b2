//! Flow control inside one session: reading stops while the session owes its client too many
//! bytes, or holds questions it has not asked yet, and resumes when neither is the case.
//!
//! The session reports what it owes (see the memory bound in [`crate::session`]) to its
//! [`Flow`]; the session reads nothing while `Flow` says reading is paused, and its task is
//! woken when it may read again. Reading resumes only once what is owed is back
//! under half the mark, so a client reading slowly does not flip reading on and off at every
//! answer. Everything lives on the session's thread, so plain `Cell`s suffice.

use std::{cell::Cell, task::Waker};

/// Whether a session may read.
pub struct Flow {
    high_water: usize,
    paused: Cell<bool>,
    reader: Cell<Option<Waker>>,
}

impl Flow {
    /// Flow control pausing reads while more than `high_water` bytes are owed.
    pub fn new(high_water: usize) -> Self {
        Self { high_water, paused: Cell::new(false), reader: Cell::new(None) }
    }

    /// The mark above which reading pauses.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Reports the bytes owed and whether questions read are held back unasked: owing more
    /// than the mark, or holding questions, pauses reading; owing at most half the mark and
    /// holding none resumes it.
    pub fn set_owed(&self, owed: usize, holding_questions: bool) {
        if owed > self.high_water || holding_questions {
            self.paused.set(true);
        } else if self.paused.get() && owed <= self.high_water / 2 {
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

    /// Wakes `reader` when reading resumes.
    pub fn wake_on_resume(&self, reader: &Waker) {
        self.reader.set(Some(reader.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use super::*;
    use crate::inbox::tests::CountWakes;

    #[test]
    fn owing_more_than_the_mark_pauses_and_owing_half_resumes_with_a_wake() {
        let flow = Flow::new(100);
        flow.set_owed(100, false);
        assert!(!flow.is_paused(), "at the mark is not above it");
        flow.set_owed(101, false);
        assert!(flow.is_paused());

        let wakes = Arc::new(CountWakes(0.into()));
        flow.wake_on_resume(&Waker::from(wakes.clone()));
        flow.set_owed(51, false);
        assert!(flow.is_paused(), "51 is above half the mark");
        flow.set_owed(50, false);
        assert!(!flow.is_paused());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn held_questions_pause_reading_whatever_is_owed() {
        let flow = Flow::new(10);
        flow.set_owed(0, true);
        assert!(flow.is_paused());
        flow.set_owed(0, false);
        assert!(!flow.is_paused());
    }
}
