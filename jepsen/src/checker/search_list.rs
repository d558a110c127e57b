//! The linearizability search's history: call and return entries in time
//! order, as a doubly-linked list over a vector so that lifting an
//! operation out and putting it back (dancing links) are O(1).
//!
//! Entry 0 is the head sentinel and the last entry the end sentinel; entry
//! numbers grow with time, so a larger entry number is later in the
//! history. At equal timestamps calls come before returns: operations that
//! merely touch count as concurrent, which can only accept more histories.

use super::register::Prepared;

/// What the search finds at an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// The invocation of operation `op`.
    Call { op: usize },
    /// The completion of operation `op`: it must be linearized by now.
    Return { op: usize },
    /// The end of the list.
    End,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Head,
    Call { op: usize, ret: Option<usize> },
    Return { op: usize },
    End,
}

/// The entry list; see the module documentation.
#[derive(Debug)]
pub(crate) struct EntryList {
    slots: Vec<Slot>,
    /// The entry of each operation's call.
    calls: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EntryList {
    /// Builds the list from prepared operations (indexed by position).
    /// Optional operations get a call and no return.
    pub(crate) fn new(ops: &[Prepared]) -> EntryList {
        // (time, returns after calls, op, is_return)
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (op, p) in ops.iter().enumerate() {
            events.push((p.invoke_ns, false, op));
            if let Some(deadline) = p.deadline_ns {
                events.push((deadline, true, op));
            }
        }
        events.sort_unstable();
        let mut ret_entry = vec![None; ops.len()];
        let mut calls = vec![0; ops.len()];
        for (i, &(_, is_return, op)) in events.iter().enumerate() {
            if is_return {
                ret_entry[op] = Some(i + 1);
            } else {
                calls[op] = i + 1;
            }
        }
        let mut slots = Vec::with_capacity(events.len() + 2);
        slots.push(Slot::Head);
        slots.extend(events.iter().map(|&(_, is_return, op)| {
            if is_return {
                Slot::Return { op }
            } else {
                Slot::Call {
                    op,
                    ret: ret_entry[op],
                }
            }
        }));
        slots.push(Slot::End);
        let len = slots.len();
        EntryList {
            slots,
            calls,
            next: (1..=len).map(|i| i.min(len - 1)).collect(),
            prev: (0..len).map(|i| i.saturating_sub(1)).collect(),
        }
    }

    /// The first entry after the head.
    pub(crate) fn first(&self) -> usize {
        self.next[0]
    }

    /// The entry after `entry`.
    pub(crate) fn next(&self, entry: usize) -> usize {
        self.next[entry]
    }

    /// What is at `entry`.
    pub(crate) fn node(&self, entry: usize) -> Node {
        match self.slots[entry] {
            Slot::Call { op, .. } => Node::Call { op },
            Slot::Return { op } => Node::Return { op },
            // The walk never stands on the head.
            Slot::Head | Slot::End => Node::End,
        }
    }

    /// The operation whose call is at `call` (a call entry).
    pub(crate) fn op_of(&self, call: usize) -> usize {
        match self.slots[call] {
            Slot::Call { op, .. } | Slot::Return { op } => op,
            Slot::Head | Slot::End => usize::MAX,
        }
    }

    /// The entry of operation `op`'s call.
    pub(crate) fn call_of(&self, op: usize) -> usize {
        self.calls[op]
    }

    /// Removes the call at `call` and its return, if any.
    pub(crate) fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Slot::Call { ret: Some(ret), .. } = self.slots[call] {
            self.unlink(ret);
        }
    }

    /// Puts back what [`EntryList::lift`] removed; lifts must be undone in
    /// reverse order.
    pub(crate) fn unlift(&mut self, call: usize) {
        if let Slot::Call { ret: Some(ret), .. } = self.slots[call] {
            self.relink(ret);
        }
        self.relink(call);
    }

    /// The operations whose calls are still listed before entry `stop`.
    pub(crate) fn calls_before(&self, stop: usize) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut entry = self.first();
        while entry != stop && entry < self.slots.len() - 1 {
            if let Slot::Call { op, .. } = self.slots[entry] {
                ops.push(op);
            }
            entry = self.next[entry];
        }
        ops
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }
}
