//! The node's resource thresholds, as the kubelet's `--eviction-hard`, `--kube-reserved` and
//! `--system-reserved` define them: parsing, the allocatable they leave of the capacity
//! (pkg/kubelet/cm's node allocatable: capacity − kube-reserved − system-reserved − the hard
//! eviction threshold), and the MemoryPressure / DiskPressure / PIDPressure they signal.
//!
//! Signals are observed as the kubelet's eviction manager does on Linux: `memory.available`
//! is MemAvailable, `nodefs.*` and `imagefs.*` the file system of the data directory (one file
//! system holds both here), `pid.available` is `kernel.pid_max` minus the threads running.
//!
//! This module computes; it owns no loop, reads nothing from the host and must not touch
//! pods. Pods are not evicted under pressure (the eviction manager's ranking and killing is not
//! implemented): the conditions are reported and the node lifecycle controller taints the node
//! so that nothing new is scheduled onto it.

use std::fmt;

use crate::quantity::parse_milli;

/// The kubelet's default `--eviction-hard` on Linux.
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";

/// What a threshold watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodefsAvailable,
        Signal::NodefsInodesFree,
        Signal::ImagefsAvailable,
        Signal::ImagefsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    fn parse(text: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// How low a signal may go: an absolute amount (bytes, inodes, PIDs) or a share of the
/// capacity in hundredths of a percent (`10%` is 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Absolute(i64),
    PercentHundredths(u32),
}

impl Amount {
    /// The amount for a resource of size `capacity`.
    pub fn of(self, capacity: i64) -> i64 {
        match self {
            Amount::Absolute(value) => value,
            Amount::PercentHundredths(share) => {
                let value = i128::from(capacity.max(0)) * i128::from(share) / 10_000;
                i64::try_from(value).unwrap_or(i64::MAX)
            }
        }
    }
}

/// One hard eviction threshold: the signal is under pressure below `amount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub signal: Signal,
    pub amount: Amount,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.amount {
            Amount::Absolute(value) => write!(f, "{}<{value}", self.signal.name()),
            Amount::PercentHundredths(share) => write!(
                f,
                "{}<{}.{:02}%",
                self.signal.name(),
                share / 100,
                share % 100
            ),
        }
    }
}

/// Parses `--eviction-hard` items (`memory.available<100Mi`, `nodefs.available<10%`), as the
/// kubelet does: only `<`, each signal at most once, quantities or percentages.
pub fn parse_thresholds(items: &[String]) -> Result<Vec<Threshold>, String> {
    let mut thresholds: Vec<Threshold> = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (name, value) = item.split_once('<').ok_or_else(|| {
            format!(
                "invalid eviction threshold {item:?}: expected SIGNAL<QUANTITY or SIGNAL<PERCENT%"
            )
        })?;
        let signal = Signal::parse(name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
            format!(
                "invalid eviction threshold {item:?}: unknown signal {name:?} (known: {})",
                known.join(", ")
            )
        })?;
        let value = value.trim();
        let amount = if let Some(percent) = value.strip_suffix('%') {
            let milli = parse_milli(percent)
                .filter(|m| (0..=100_000).contains(m))
                .ok_or_else(|| {
                    format!("invalid eviction threshold {item:?}: percentage must be 0%..100%")
                })?;
            Amount::PercentHundredths((milli / 10) as u32)
        } else {
            let milli = parse_milli(value).filter(|m| *m >= 0).ok_or_else(|| {
                format!(
                    "invalid eviction threshold {item:?}: {value:?} is not a non-negative quantity"
                )
            })?;
            Amount::Absolute(whole_units(milli))
        };
        if thresholds.iter().any(|t| t.signal == signal) {
            return Err(format!(
                "invalid eviction threshold {item:?}: {} given twice",
                signal.name()
            ));
        }
        thresholds.push(Threshold { signal, amount });
    }
    Ok(thresholds)
}

/// Whole units from a non-negative number of thousandths, rounded up (`Quantity.Value()`).
fn whole_units(milli: i64) -> i64 {
    milli / 1000 + i64::from(milli % 1000 != 0)
}

/// Resources held back from pods (`--kube-reserved` plus `--system-reserved`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub pids: i64,
}

impl Reserved {
    pub fn plus(self, other: Reserved) -> Reserved {
        Reserved {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            ephemeral_storage_bytes: self
                .ephemeral_storage_bytes
                .saturating_add(other.ephemeral_storage_bytes),
            pids: self.pids.saturating_add(other.pids),
        }
    }
}

/// Parses `--kube-reserved` / `--system-reserved` items (`cpu=100m`, `memory=256Mi`,
/// `ephemeral-storage=1Gi`, `pid=1000`); `flag` names the flag in errors.
pub fn parse_reserved(flag: &str, items: &[String]) -> Result<Reserved, String> {
    let mut reserved = Reserved::default();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (name, value) = item.split_once('=').ok_or_else(|| {
            format!("invalid {flag} {item:?}: expected RESOURCE=QUANTITY (cpu, memory, ephemeral-storage, pid)")
        })?;
        let milli = parse_milli(value).filter(|m| *m >= 0).ok_or_else(|| {
            format!("invalid {flag} {item:?}: {value:?} is not a non-negative quantity")
        })?;
        let whole = whole_units(milli);
        match name.trim() {
            "cpu" => reserved.cpu_milli = milli,
            "memory" => reserved.memory_bytes = whole,
            "ephemeral-storage" => reserved.ephemeral_storage_bytes = whole,
            "pid" => reserved.pids = whole,
            other => {
                return Err(format!(
                    "invalid {flag} {item:?}: unknown resource {other:?} (cpu, memory, ephemeral-storage, pid)"
                ))
            }
        }
    }
    Ok(reserved)
}

/// The node's size, as capacity reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
}

/// What is left for pods: capacity minus the reservations and, for memory and ephemeral
/// storage, the hard eviction threshold (never below zero).
pub fn allocatable(capacity: Capacity, reserved: Reserved, thresholds: &[Threshold]) -> Capacity {
    let threshold = |signal: Signal, size: i64| {
        thresholds
            .iter()
            .find(|t| t.signal == signal)
            .map_or(0, |t| t.amount.of(size))
    };
    Capacity {
        cpu_milli: (capacity.cpu_milli - reserved.cpu_milli).max(0),
        memory_bytes: (capacity.memory_bytes
            - reserved.memory_bytes
            - threshold(Signal::MemoryAvailable, capacity.memory_bytes))
        .max(0),
        ephemeral_storage_bytes: (capacity.ephemeral_storage_bytes
            - reserved.ephemeral_storage_bytes
            - threshold(Signal::NodefsAvailable, capacity.ephemeral_storage_bytes))
        .max(0),
    }
}

/// The signals' current values and the sizes percentages are taken of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observations {
    pub memory_bytes: i64,
    pub memory_available_bytes: i64,
    pub disk_bytes: i64,
    pub disk_available_bytes: i64,
    pub inodes: i64,
    pub inodes_free: i64,
    /// `kernel.pid_max`.
    pub pid_max: i64,
    /// Threads (each holds a PID) running on the host.
    pub threads: i64,
}

impl Observations {
    /// (available, capacity) of a signal; `None` when it could not be observed.
    fn value(&self, signal: Signal) -> Option<(i64, i64)> {
        let pair = match signal {
            Signal::MemoryAvailable => (self.memory_available_bytes, self.memory_bytes),
            Signal::NodefsAvailable | Signal::ImagefsAvailable => {
                (self.disk_available_bytes, self.disk_bytes)
            }
            Signal::NodefsInodesFree | Signal::ImagefsInodesFree => (self.inodes_free, self.inodes),
            Signal::PidAvailable => ((self.pid_max - self.threads).max(0), self.pid_max),
        };
        (pair.1 > 0).then_some(pair)
    }
}

/// Which pressure conditions are true.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The pressures `observed` is under: a signal below its threshold.
pub fn pressure(thresholds: &[Threshold], observed: &Observations) -> Pressure {
    let mut pressure = Pressure::default();
    for threshold in thresholds {
        let Some((available, capacity)) = observed.value(threshold.signal) else {
            continue;
        };
        if available >= threshold.amount.of(capacity) {
            continue;
        }
        match threshold.signal {
            Signal::MemoryAvailable => pressure.memory = true,
            Signal::PidAvailable => pressure.pid = true,
            _ => pressure.disk = true,
        }
    }
    pressure
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Vec<String> {
        text.split(',').map(String::from).collect()
    }

    #[test]
    fn the_default_thresholds_parse() {
        let thresholds = parse_thresholds(&items(DEFAULT_EVICTION_HARD)).expect("defaults");
        assert_eq!(
            thresholds,
            vec![
                Threshold {
                    signal: Signal::MemoryAvailable,
                    amount: Amount::Absolute(100 << 20)
                },
                Threshold {
                    signal: Signal::NodefsAvailable,
                    amount: Amount::PercentHundredths(1000)
                },
                Threshold {
                    signal: Signal::NodefsInodesFree,
                    amount: Amount::PercentHundredths(500)
                },
                Threshold {
                    signal: Signal::ImagefsAvailable,
                    amount: Amount::PercentHundredths(1500)
                },
            ]
        );
        assert_eq!(thresholds[1].to_string(), "nodefs.available<10.00%");
        assert_eq!(
            parse_thresholds(&items("pid.available<2.5%")).expect("pid"),
            vec![Threshold {
                signal: Signal::PidAvailable,
                amount: Amount::PercentHundredths(250)
            }]
        );
    }

    #[test]
    fn bad_thresholds_say_what_is_wrong() {
        for (text, says) in [
            ("memory.available>1Gi", "expected SIGNAL<QUANTITY"),
            ("memory.free<1Gi", "unknown signal \"memory.free\""),
            ("nodefs.available<120%", "0%..100%"),
            ("memory.available<lots", "not a non-negative quantity"),
            ("memory.available<-1", "not a non-negative quantity"),
            (
                "memory.available<1Gi,memory.available<2Gi",
                "memory.available given twice",
            ),
        ] {
            let err = parse_thresholds(&items(text)).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn reservations_parse_and_add_up() {
        let kube = parse_reserved("--kube-reserved", &items("cpu=100m,memory=256Mi"))
            .expect("kube-reserved");
        let system = parse_reserved(
            "--system-reserved",
            &items("cpu=0.5,memory=1Gi,ephemeral-storage=2Gi,pid=1000"),
        )
        .expect("system-reserved");
        assert_eq!(
            kube.plus(system),
            Reserved {
                cpu_milli: 600,
                memory_bytes: (256 << 20) + (1 << 30),
                ephemeral_storage_bytes: 2 << 30,
                pids: 1000,
            }
        );
        let err = parse_reserved("--kube-reserved", &items("gpu=1")).expect_err("gpu");
        assert!(err.contains("--kube-reserved") && err.contains("unknown resource \"gpu\""));
        let err = parse_reserved("--system-reserved", &items("memory")).expect_err("no value");
        assert!(err.contains("RESOURCE=QUANTITY"));
    }

    #[test]
    fn allocatable_is_capacity_minus_reservations_and_hard_eviction() {
        let capacity = Capacity {
            cpu_milli: 4000,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 100 << 30,
        };
        let thresholds = parse_thresholds(&items(DEFAULT_EVICTION_HARD)).expect("defaults");
        let reserved = Reserved {
            cpu_milli: 500,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 0,
            pids: 0,
        };
        assert_eq!(
            allocatable(capacity, reserved, &thresholds),
            Capacity {
                cpu_milli: 3500,
                memory_bytes: (8 << 30) - (1 << 30) - (100 << 20),
                ephemeral_storage_bytes: (100 << 30) / 10 * 9,
            }
        );
        // Nothing reserved, no thresholds: all of it; never negative.
        assert_eq!(allocatable(capacity, Reserved::default(), &[]), capacity);
        let greedy = Reserved {
            cpu_milli: 10_000,
            ..Reserved::default()
        };
        assert_eq!(allocatable(capacity, greedy, &[]).cpu_milli, 0);
    }

    #[test]
    fn pressure_is_a_signal_below_its_threshold() {
        let thresholds = parse_thresholds(&items(
            "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,pid.available<1000",
        ))
        .expect("thresholds");
        let healthy = Observations {
            memory_bytes: 8 << 30,
            memory_available_bytes: 4 << 30,
            disk_bytes: 100 << 30,
            disk_available_bytes: 50 << 30,
            inodes: 1_000_000,
            inodes_free: 900_000,
            pid_max: 32768,
            threads: 500,
        };
        assert_eq!(pressure(&thresholds, &healthy), Pressure::default());
        let low_memory = Observations {
            memory_available_bytes: 99 << 20,
            ..healthy
        };
        assert_eq!(
            pressure(&thresholds, &low_memory),
            Pressure {
                memory: true,
                ..Pressure::default()
            }
        );
        let no_inodes = Observations {
            inodes_free: 40_000,
            ..healthy
        };
        assert!(pressure(&thresholds, &no_inodes).disk);
        let full_disk = Observations {
            disk_available_bytes: 9 << 30,
            ..healthy
        };
        assert!(pressure(&thresholds, &full_disk).disk);
        let pid_bound = Observations {
            threads: 32000,
            ..healthy
        };
        assert!(pressure(&thresholds, &pid_bound).pid);
        // Unobservable signals (zero capacity) never signal pressure.
        assert_eq!(
            pressure(&thresholds, &Observations::default()),
            Pressure::default()
        );
    }
}
