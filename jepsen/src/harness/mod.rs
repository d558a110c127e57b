//! The parts of a run: a cluster of real `atoll` processes, the clients of
//! a workload, and the nemesis that injects faults.

pub mod cluster;
pub mod nemesis;
pub mod register;
