//! The parts of a run besides the cluster ([`atoll_jepsen::cluster`]): the
//! clients of a workload, and the nemesis that injects faults.

pub mod nemesis;
pub mod register;
