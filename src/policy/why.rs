//! What a policy can say about the choice it would make now (`ctl
//! explain`): the state its pick reads, read without changing anything.
//! The choice itself is never recomputed here: `ctl explain` runs the
//! policy's own pick on a copy ([`super::Policy::boxed_clone`]), and this
//! only says why that is the answer.

use serde::Serialize;

/// One policy's reasons, per worker slot and per backend (in list order;
/// `ctl explain` sorts them into the policy's order of preference).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum Why {
    /// Round-robin does not look at the client.
    RoundRobin {
        /// The worker rotation goes on from this slot (the first routable
        /// one from here is next).
        next_slot: usize,
        /// Per backend: its smooth-rotation credit before the next pick,
        /// in weight units. The pick adds each routable backend's
        /// effective weight to its credit and takes the highest (the
        /// first in list order on a tie), which then gives back the sum.
        credit: Vec<f64>,
        /// The fallback rotation starts from this backend.
        next_fallback: usize,
    },
    /// Least-connections compares the counts in the views.
    LeastConn {
        /// Ties between slots go to the first from here.
        worker_scan_from: usize,
        /// Ties between backends go to the first from here.
        backend_scan_from: usize,
    },
    /// Sticky ranks by rendezvous scores of the client's address.
    Sticky {
        /// The client's bucket (of 65,536).
        bucket: usize,
        /// Per slot: its score for this client, 0..1; the highest routable
        /// slot wins.
        slot_scores: Vec<f64>,
        /// Per backend: `weight / -ln(u)` for this client's bucket; the
        /// highest routable one wins (the smaller key on a tie).
        backend_scores: Vec<f64>,
        /// Per backend: whether this bucket takes it while it ramps up
        /// (slow start); always true for a backend at full weight.
        ramp_admits: Vec<bool>,
    },
}
