//! Replacing a version one pod at a time, so the new pods take the old
//! pods' addresses (docs/apps.md#replacing-a-version, docs/ipam.md#the-reserve).
//!
//! A version deployed with `replace` names the version it replaces. In each
//! Cell the reconciler then steps both Deployments with no surge and one pod
//! unavailable at most (Kubernetes' `maxSurge: 0, maxUnavailable: 1`,
//! across two Deployments):
//!
//! 1. **No surge.** The new version grows only into slots the old version's
//!    pods have left, and an old pod holds its slot until its object is
//!    gone: kubelet tears the sandbox down (CNI DEL, which hands the address
//!    to the app's reserve) before the pod is removed, so the new pod that
//!    fills the slot finds the address reserved.
//! 2. **One at a time.** The old version gives up one pod only when every
//!    new pod is Ready, no slot is free and none of its own pods is still
//!    terminating. The pod goes through the ordinary scale-down, so it is
//!    drained first when the app has an LB.
//! 3. **The rest at once.** When the new version has its full count and all
//!    of it is Ready, the old version's remaining pods (more than the new
//!    count asked for) go together: capacity no longer depends on them.
//! 4. **Done** when the new version is complete and Ready and the old one
//!    has no pod left; the reconciler then deletes the old version record.
//!
//! The budget of slots is the larger of the two counts, so an upgrade that
//! also shrinks the app never runs below the new count, and one that grows
//! it starts the extra pods at once.

/// What a pass sees of the two versions in one Cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The new version's count for this Cell, as the user asked.
    pub new_desired: u32,
    /// The old version's count for this Cell, as the user asked.
    pub old_desired: u32,
    /// The new Deployment's `spec.replicas` (0 before it exists).
    pub new_spec: u32,
    /// Its ready replicas.
    pub new_ready: u32,
    /// The old Deployment's `spec.replicas` (0 when it does not exist).
    pub old_spec: u32,
    /// The old version's pods, terminating ones included.
    pub old_pods: u32,
}

/// The counts to apply in this pass, and whether the handover is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub new: u32,
    pub old: u32,
    pub done: bool,
}

pub fn step(o: &Observed) -> Step {
    let budget = o.new_desired.max(o.old_desired);
    let new = o
        .new_desired
        .min(o.new_spec.max(budget.saturating_sub(o.old_pods)));
    let new_all_ready = o.new_ready >= o.new_spec;
    let complete = new_all_ready && o.new_spec >= o.new_desired;
    let no_free_slot = o.new_spec.saturating_add(o.old_pods) >= budget;
    let none_terminating = o.old_pods <= o.old_spec;
    let old = if complete {
        0
    } else if new_all_ready && no_free_slot && none_terminating {
        o.old_spec.saturating_sub(1)
    } else {
        o.old_spec
    };
    Step {
        new,
        old,
        done: complete && o.old_pods == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(new_desired: u32, old_desired: u32) -> Observed {
        Observed {
            new_desired,
            old_desired,
            new_spec: 0,
            new_ready: 0,
            old_spec: old_desired,
            old_pods: old_desired,
        }
    }

    /// Runs the steps as a Cell would: the pods follow the specs (an old
    /// pod terminates for one pass, a new one is Ready one pass after it
    /// is asked for), checking the invariants on every pass.
    fn simulate(start: Observed) -> (Vec<Step>, u32) {
        let mut o = start;
        let budget = o.new_desired.max(o.old_desired);
        let mut steps = Vec::new();
        let mut fewest_ready = u32::MAX;
        for _ in 0..100 {
            let s = step(&o);
            steps.push(s);
            assert!(s.new + o.old_pods <= budget, "surge at {o:?} → {s:?}");
            if s.done {
                return (steps, fewest_ready);
            }
            let serving = o.new_ready + o.old_spec.min(o.old_pods);
            fewest_ready = fewest_ready.min(serving);
            // One pass later: the terminating pods are gone, the asked-for
            // new pods are up and Ready, the old scale-down is applied.
            o.old_pods = o.old_pods.min(o.old_spec);
            o.new_ready = o.new_spec;
            o.new_spec = s.new;
            o.old_spec = s.old;
        }
        panic!("no end from {start:?}: {steps:?}");
    }

    #[test]
    fn no_surge_the_new_version_waits_for_the_old_pods_slot() {
        let s = step(&obs(4, 4));
        assert_eq!(s.new, 0, "no free slot yet");
        assert_eq!(s.old, 3, "one old pod goes first");
        let terminating = Observed {
            old_spec: 3,
            ..obs(4, 4)
        };
        assert_eq!(step(&terminating).new, 0, "its pod still holds the slot");
        let gone = Observed {
            old_spec: 3,
            old_pods: 3,
            ..obs(4, 4)
        };
        assert_eq!(step(&gone).new, 1);
    }

    #[test]
    fn one_at_a_time_the_old_version_waits_for_every_new_pod_to_be_ready() {
        let starting = Observed {
            new_spec: 1,
            new_ready: 0,
            old_spec: 3,
            old_pods: 3,
            ..obs(4, 4)
        };
        assert_eq!(step(&starting).old, 3);
        let ready = Observed {
            new_ready: 1,
            ..starting
        };
        assert_eq!(step(&ready).old, 2);
        let terminating = Observed {
            old_pods: 4,
            ..ready
        };
        assert_eq!(step(&terminating).old, 3, "holds while a pod terminates");
    }

    #[test]
    fn one_at_a_time_four_replicas_step_four_times_never_below_three_serving() {
        let (steps, fewest) = simulate(obs(4, 4));
        let mut downs: Vec<u32> = steps.iter().map(|s| s.old).collect();
        downs.dedup();
        assert_eq!(downs, vec![3, 2, 1, 0], "{steps:?}");
        assert_eq!(fewest, 3, "{steps:?}");
        assert_eq!(steps.last().map(|s| s.new), Some(4));
    }

    #[test]
    fn the_rest_at_once_a_shrinking_upgrade_drops_the_extra_old_pods_together() {
        let (steps, fewest) = simulate(obs(2, 5));
        let last_old_step = steps.iter().rev().find(|s| s.old > 0).map(|s| s.old);
        assert_eq!(
            last_old_step,
            Some(3),
            "5 → 2: once 2 new are Ready, the last 3 go"
        );
        assert!(fewest >= 2, "never below the new count: {steps:?}");
    }

    #[test]
    fn a_growing_upgrade_starts_the_extra_pods_at_once() {
        let s = step(&obs(5, 2));
        assert_eq!(s.new, 3, "the 3 slots no old pod holds");
        assert_eq!(s.old, 2, "the old pods wait for them");
        let (steps, _) = simulate(obs(5, 2));
        assert_eq!(steps.last().map(|s| (s.new, s.old)), Some((5, 0)));
    }

    #[test]
    fn no_old_deployment_in_the_cell_means_the_new_one_starts_whole_and_is_done_when_ready() {
        let fresh = Observed {
            old_spec: 0,
            old_pods: 0,
            ..obs(3, 3)
        };
        assert_eq!(
            step(&fresh),
            Step {
                new: 3,
                old: 0,
                done: false
            }
        );
        let ready = Observed {
            new_spec: 3,
            new_ready: 3,
            ..fresh
        };
        assert!(step(&ready).done);
    }

    #[test]
    fn done_only_when_the_old_pods_are_gone() {
        let left = Observed {
            new_spec: 4,
            new_ready: 4,
            old_spec: 0,
            old_pods: 1,
            ..obs(4, 4)
        };
        assert!(!step(&left).done);
        assert_eq!(step(&left).old, 0);
        assert!(
            step(&Observed {
                old_pods: 0,
                ..left
            })
            .done
        );
    }

    #[test]
    fn a_new_pod_that_never_gets_ready_stops_the_handover_where_it_is() {
        let stuck = Observed {
            new_spec: 1,
            new_ready: 0,
            old_spec: 3,
            old_pods: 3,
            ..obs(4, 4)
        };
        assert_eq!(
            step(&stuck),
            Step {
                new: 1,
                old: 3,
                done: false
            }
        );
    }

    #[test]
    fn zero_replicas_on_both_sides_is_done_at_once() {
        assert!(step(&obs(0, 0)).done);
    }
}
