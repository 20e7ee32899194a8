//! Faults and their schedules. A schedule comes from a seed alone, so a failing run replays
//! from its seed; which concrete node a fault hits ("the leader", "follower 2 of 4") is
//! resolved against the cluster when the fault starts.

use std::fmt;

use rand::rngs::StdRng;
use rand::Rng;

/// One fault, with how long it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the leader, restart it after `down_ms`.
    KillLeader { down_ms: u64 },
    /// `kill -STOP` the leader for `ms`, then `kill -CONT`: a deposed leader wakes up.
    PauseLeader { ms: u64 },
    /// Cut the leader from every peer, both ways.
    IsolateLeader { ms: u64 },
    /// Cut a minority (chosen by `pick`; it may hold the leader) from the rest.
    PartitionMinority { pick: u64, ms: u64 },
    /// The leader's messages to one follower vanish; the follower's still arrive.
    OneWayFromLeader { pick: u64, ms: u64 },
    /// Random minorities cut and healed every `period_ms`, for `ms`.
    Flapping { pick: u64, ms: u64, period_ms: u64 },
    /// Every link slow: `delay_ms` plus up to `jitter_ms`.
    SlowLinks {
        ms: u64,
        delay_ms: u64,
        jitter_ms: u64,
    },
    /// Every link cuts its connections with this chance per chunk.
    LossyLinks { ms: u64, per_mille: u32 },
    /// SIGTERM and restart every node in turn.
    RollingRestart,
    /// Remove a follower, wipe its data, add it back: it rejoins through a snapshot.
    WipeRejoin { pick: u64 },
    /// Fill the disk of the node on a small tmpfs; it must exit with a clear error, and
    /// rejoin with nothing lost once space returns.
    DiskFull,
    /// Add a spare node as a voter, then remove it, under load.
    AddRemoveMember,
    /// No fault: load only (a baseline, and room for planted bugs to show).
    Quiet { ms: u64 },
    /// The leader and one follower cut off together (a deposed leader that still reaches a
    /// node; with three voters, the leader alone).
    IsolateLeaderWith { pick: u64, ms: u64 },
    /// A minority cut off while tokens are revoked through nodes on both sides.
    PartitionRevoking { pick: u64, ms: u64 },
    /// The leader cut off with the smallest minority while the role is changed.
    PartitionChangingRoles { ms: u64 },
    /// One node restarted with its wall clock skewed, held, then restarted without.
    ClockSkew { pick: u64, offset_ms: i64, ms: u64 },
    /// The issuer replica cut off from every voter.
    IsolateReplica { ms: u64 },
}

impl Fault {
    /// What kind of fault, without its figures: the row it is tallied under in a report.
    pub fn class(&self) -> &'static str {
        match self {
            Fault::KillLeader { .. } => "kill -9 leader",
            Fault::PauseLeader { .. } => "SIGSTOP leader",
            Fault::IsolateLeader { .. } => "isolate leader",
            Fault::PartitionMinority { .. } => "partition minority",
            Fault::OneWayFromLeader { .. } => "one-way leader -/-> follower",
            Fault::Flapping { .. } => "flapping partitions",
            Fault::SlowLinks { .. } => "slow links",
            Fault::LossyLinks { .. } => "links cutting connections",
            Fault::RollingRestart => "rolling restart",
            Fault::WipeRejoin { .. } => "wipe follower and rejoin",
            Fault::DiskFull => "disk full",
            Fault::AddRemoveMember => "add and remove a member",
            Fault::Quiet { .. } => "no fault",
            Fault::IsolateLeaderWith { .. } => "isolate leader with a follower",
            Fault::PartitionRevoking { .. } => "partition minority during revocations",
            Fault::PartitionChangingRoles { .. } => "partition during role changes",
            Fault::ClockSkew { .. } => "clock skew",
            Fault::IsolateReplica { .. } => "isolate the issuer replica",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillLeader { down_ms } => write!(f, "kill -9 leader, down {down_ms} ms"),
            Fault::PauseLeader { ms } => write!(f, "SIGSTOP leader for {ms} ms"),
            Fault::IsolateLeader { ms } => write!(f, "isolate leader for {ms} ms"),
            Fault::PartitionMinority { pick, ms } => {
                write!(f, "partition minority #{pick} for {ms} ms")
            }
            Fault::OneWayFromLeader { pick, ms } => {
                write!(f, "one-way leader -/-> follower #{pick} for {ms} ms")
            }
            Fault::Flapping {
                pick,
                ms,
                period_ms,
            } => write!(
                f,
                "flapping partitions #{pick} every {period_ms} ms for {ms} ms"
            ),
            Fault::SlowLinks {
                ms,
                delay_ms,
                jitter_ms,
            } => write!(f, "all links +{delay_ms}±{jitter_ms} ms for {ms} ms"),
            Fault::LossyLinks { ms, per_mille } => {
                write!(f, "all links cut chunks at {per_mille}‰ for {ms} ms")
            }
            Fault::RollingRestart => write!(f, "rolling restart"),
            Fault::WipeRejoin { pick } => write!(f, "wipe follower #{pick} and rejoin"),
            Fault::DiskFull => write!(f, "disk full on the tmpfs node"),
            Fault::AddRemoveMember => write!(f, "add the spare node, then remove it"),
            Fault::Quiet { ms } => write!(f, "no fault for {ms} ms"),
            Fault::IsolateLeaderWith { pick, ms } => {
                write!(f, "isolate leader with follower #{pick} for {ms} ms")
            }
            Fault::PartitionRevoking { pick, ms } => {
                write!(
                    f,
                    "partition minority #{pick} during revocations for {ms} ms"
                )
            }
            Fault::PartitionChangingRoles { ms } => {
                write!(
                    f,
                    "partition leader's minority during role changes for {ms} ms"
                )
            }
            Fault::ClockSkew {
                pick,
                offset_ms,
                ms,
            } => write!(f, "skew node #{pick}'s clock by {offset_ms} ms for {ms} ms"),
            Fault::IsolateReplica { ms } => write!(f, "isolate the issuer replica for {ms} ms"),
        }
    }
}

/// A named group of faults; the short suite runs each, the soak draws from all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    LeaderKillLoop,
    LeaderIsolated,
    MinorityPartition,
    FlappingPartitions,
    RollingRestart,
    FollowerWipeRejoin,
    DiskFull,
    MembershipChange,
    PausedLeader,
    OneWayPartition,
    SlowLossyLinks,
    /// Load without faults. Not in [`Scenario::ALL`].
    Steady,
    // Credential scenarios (part two): they need the credential workload.
    DeposedLeaderWithFollower,
    PartitionDuringRevocation,
    PartitionDuringRoleChange,
    ClockSkew,
    ReplicaPartitioned,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::LeaderKillLoop,
        Scenario::LeaderIsolated,
        Scenario::MinorityPartition,
        Scenario::FlappingPartitions,
        Scenario::RollingRestart,
        Scenario::FollowerWipeRejoin,
        Scenario::DiskFull,
        Scenario::MembershipChange,
        Scenario::PausedLeader,
        Scenario::OneWayPartition,
        Scenario::SlowLossyLinks,
    ];

    /// The scenarios of the credential workload, drawn besides [`Scenario::ALL`] when a run
    /// has it.
    pub const CREDENTIAL: [Scenario; 5] = [
        Scenario::DeposedLeaderWithFollower,
        Scenario::PartitionDuringRevocation,
        Scenario::PartitionDuringRoleChange,
        Scenario::ClockSkew,
        Scenario::ReplicaPartitioned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderKillLoop => "leader-kill-loop",
            Scenario::LeaderIsolated => "leader-isolated",
            Scenario::MinorityPartition => "minority-partition",
            Scenario::FlappingPartitions => "flapping-partitions",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::FollowerWipeRejoin => "follower-wipe-rejoin",
            Scenario::DiskFull => "disk-full",
            Scenario::MembershipChange => "membership-change",
            Scenario::PausedLeader => "paused-leader",
            Scenario::OneWayPartition => "one-way-partition",
            Scenario::SlowLossyLinks => "slow-lossy-links",
            Scenario::Steady => "steady",
            Scenario::DeposedLeaderWithFollower => "deposed-leader-with-follower",
            Scenario::PartitionDuringRevocation => "partition-during-revocation",
            Scenario::PartitionDuringRoleChange => "partition-during-role-change",
            Scenario::ClockSkew => "clock-skew",
            Scenario::ReplicaPartitioned => "replica-partitioned",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::CREDENTIAL)
            .chain([Scenario::Steady])
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown scenario {s:?}; known: {}, {}",
                    Self::ALL.map(Self::name).join(", "),
                    Self::CREDENTIAL.map(Self::name).join(", ")
                )
            })
    }

    /// The faults of one pass of this scenario.
    pub fn faults(self, rng: &mut StdRng) -> Vec<Fault> {
        let ms = |rng: &mut StdRng, lo: u64, hi: u64| rng.gen_range(lo..=hi);
        match self {
            // Down longer than an election takes, so another node takes over: the failover
            // figure is the time to a write committed by a different leader.
            Scenario::LeaderKillLoop => (0..3)
                .map(|_| Fault::KillLeader {
                    down_ms: ms(rng, 2500, 4000),
                })
                .collect(),
            Scenario::LeaderIsolated => vec![Fault::IsolateLeader {
                ms: ms(rng, 2000, 4000),
            }],
            Scenario::MinorityPartition => vec![Fault::PartitionMinority {
                pick: rng.gen(),
                ms: ms(rng, 2000, 4000),
            }],
            Scenario::FlappingPartitions => vec![Fault::Flapping {
                pick: rng.gen(),
                ms: ms(rng, 4000, 7000),
                period_ms: ms(rng, 300, 1200),
            }],
            Scenario::RollingRestart => vec![Fault::RollingRestart],
            Scenario::FollowerWipeRejoin => vec![Fault::WipeRejoin { pick: rng.gen() }],
            Scenario::DiskFull => vec![Fault::DiskFull],
            Scenario::MembershipChange => vec![Fault::AddRemoveMember],
            Scenario::PausedLeader => vec![Fault::PauseLeader {
                ms: ms(rng, 1500, 3500),
            }],
            Scenario::OneWayPartition => vec![Fault::OneWayFromLeader {
                pick: rng.gen(),
                ms: ms(rng, 2000, 4000),
            }],
            Scenario::Steady => vec![Fault::Quiet {
                ms: ms(rng, 4000, 6000),
            }],
            // Held well past the freshness bound (1.5 s in credential runs), so the cut-off
            // side must stop issuing within the fault.
            Scenario::DeposedLeaderWithFollower => vec![Fault::IsolateLeaderWith {
                pick: rng.gen(),
                ms: ms(rng, 4000, 6000),
            }],
            Scenario::PartitionDuringRevocation => vec![Fault::PartitionRevoking {
                pick: rng.gen(),
                ms: ms(rng, 4000, 6000),
            }],
            Scenario::PartitionDuringRoleChange => vec![Fault::PartitionChangingRoles {
                ms: ms(rng, 4000, 6000),
            }],
            Scenario::ClockSkew => vec![Fault::ClockSkew {
                pick: rng.gen(),
                offset_ms: if rng.gen() {
                    rng.gen_range(5_000..=60_000)
                } else {
                    -rng.gen_range(5_000..=60_000)
                },
                ms: ms(rng, 4000, 6000),
            }],
            Scenario::ReplicaPartitioned => vec![Fault::IsolateReplica {
                ms: ms(rng, 4000, 6000),
            }],
            Scenario::SlowLossyLinks => vec![
                Fault::SlowLinks {
                    ms: ms(rng, 2000, 4000),
                    delay_ms: ms(rng, 5, 40),
                    jitter_ms: ms(rng, 0, 30),
                },
                Fault::LossyLinks {
                    ms: ms(rng, 2000, 4000),
                    per_mille: rng.gen_range(5..=30),
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let sched = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            Scenario::ALL
                .iter()
                .flat_map(|s| s.faults(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(sched(7), sched(7));
        assert_ne!(sched(7), sched(8));
    }
}
