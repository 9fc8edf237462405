//! The `counters!` macro: a port's counters written once, as a list of documented names.
//!
//! Every frame a port moves and every one it drops is counted, `status` shows the counts,
//! and tests assert them. A port keeps them in a struct its threads bump and hands out a
//! plain copy that `status` serialises; summing the copies of several sockets or remotes
//! gives the port's total. Written by hand, those are three lists of the same names that
//! drift apart when someone adds a counter to one. The macro takes the list once and
//! writes them all, so a new counter is one documented line:
//!
//! ```text
//! counters! {
//!     /// One socket's counters, shared by its threads.
//!     pub struct Counters;
//!     /// A copy of [`Counters`].
//!     pub struct CounterValues;
//!     /// Frames taken from the guest into the network.
//!     tx_frames,
//! }
//! ```
//!
//! declares `Counters`, one `AtomicU64` per name, whose `values()` copies them into
//! `CounterValues`, one `u64` per name. With a single struct line the macro declares only
//! the plain struct, for a port that keeps its counters under a lock it holds anyway (the
//! VXLAN port's table lock). Either way the plain struct is `Copy`, compares, serialises
//! with the names as its JSON fields, lists them with `named`, and has `add`, which sums
//! another copy into it. A bracketed list after the names nests other counter groups
//! declared the same way (`[refused: RefusalCounters / RefusalCounterValues,]`), as the
//! vhost-user port does with its refusals by kind.

/// Declares a port's counter types from one list of documented names; see the module doc.
macro_rules! counters {
    (
        $(#[$shared_doc:meta])* $shared_vis:vis struct $shared:ident;
        $(#[$values_doc:meta])* $values_vis:vis struct $values:ident;
        $($(#[$doc:meta])* $name:ident,)*
        $([
            $($(#[$group_doc:meta])* $group:ident: $group_shared:ident / $group_values:ident,)*
        ])?
    ) => {
        $(#[$shared_doc])*
        #[derive(Debug, Default)]
        $shared_vis struct $shared {
            $($(#[$doc])* pub $name: ::std::sync::atomic::AtomicU64,)*
            $($($(#[$group_doc])* pub $group: $group_shared,)*)?
        }

        impl $shared {
            /// The current values.
            pub fn values(&self) -> $values {
                $values {
                    // Relaxed: each counter is a tally of its own, read only to be shown;
                    // nothing else is published through it, so no order is needed.
                    $($name: self.$name.load(::std::sync::atomic::Ordering::Relaxed),)*
                    $($($group: self.$group.values(),)*)?
                }
            }
        }

        $crate::ports::counters::counters! {
            $(#[$values_doc])* $values_vis struct $values;
            $($(#[$doc])* $name,)*
            $([
                $($(#[$group_doc])* $group: $group_values,)*
            ])?
        }
    };
    (
        $(#[$values_doc:meta])* $values_vis:vis struct $values:ident;
        $($(#[$doc:meta])* $name:ident,)*
        $([
            $($(#[$group_doc:meta])* $group:ident: $group_values:ident,)*
        ])?
    ) => {
        $(#[$values_doc])*
        ///
        /// A counter missing from a status file (one written before it existed) reads as 0.
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(default)]
        $values_vis struct $values {
            $($(#[$doc])* pub $name: u64,)*
            $($($(#[$group_doc])* pub $group: $group_values,)*)?
        }

        impl $values {
            /// Adds `other`'s counts to these.
            pub fn add(&mut self, other: &$values) {
                $(self.$name += other.$name;)*
                $($(self.$group.add(&other.$group);)*)?
            }

            /// The counters by name, in the order declared (nested groups left out).
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

pub(crate) use counters;
