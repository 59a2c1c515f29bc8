//! One pod attachment on a node, seen from the host: the lock every party
//! takes before touching it, and the one way it is taken apart.
//!
//! CNI DEL, CNI GC and ADD's rollback (in `leengine-cni`) and the leak
//! reclaim of `leengine-node-agent` all tear attachments down; they share
//! [`teardown::run`] and [`lock::attachment`] from here. This sits above
//! netdp (links), ovsdb (ports) and ipam (addresses) because a teardown
//! spans all three; putting it into one of them would make that one depend
//! on the other two.

pub mod lock;
pub mod real;
pub mod teardown;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use real::{HostLinks, OvsPorts, PortScope};
pub use teardown::{
    run, Addresses, Failure, Failures, IpOutcome, Links, Plan, Port, Ports, Release, Target,
};
