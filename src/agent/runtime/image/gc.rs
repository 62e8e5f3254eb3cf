//! Image garbage collection with the kubelet's semantics: when the file system holding images
//! is used above `high_threshold_percent`, unused images are deleted, least recently used
//! first, until usage is at or below `low_threshold_percent` (the kubelet's
//! `imageGCHighThresholdPercent` / `imageGCLowThresholdPercent`, 85 and 80 by default). Images
//! used by a container, and images younger than `min_age` (`imageMinimumGCAge`, 2 minutes),
//! are never deleted.
//!
//! This module only plans: [`plan`] turns the images and the file system's numbers into the
//! list of images to delete. The image service applies it.

use std::time::Duration;

use super::digest::Digest;

/// The thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPolicy {
    pub high_threshold_percent: u8,
    pub low_threshold_percent: u8,
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// What the file system holding the images reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

impl FsUsage {
    /// statvfs(2) of the file system holding `path`.
    pub fn of(path: &std::path::Path) -> std::io::Result<FsUsage> {
        let stat = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
        Ok(FsUsage {
            capacity: stat.f_blocks.saturating_mul(stat.f_frsize),
            available: stat.f_bavail.saturating_mul(stat.f_frsize),
        })
    }

    fn used_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        (self.capacity - self.available.min(self.capacity)) * 100 / self.capacity
    }
}

/// One image as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: Digest,
    /// Bytes deleting it frees (its blobs and snapshots not shared with other images).
    pub size: u64,
    /// Milliseconds since the epoch.
    pub last_used: u64,
    pub created_at: u64,
    pub in_use: bool,
}

/// The images to delete, in order, and how many bytes that is meant to free.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcPlan {
    pub delete: Vec<Digest>,
    pub bytes_to_free: u64,
    /// Bytes the deletions free.
    pub bytes_freed: u64,
}

/// Decides what to delete. `now` is milliseconds since the epoch.
pub fn plan(policy: &GcPolicy, usage: FsUsage, images: &[Candidate], now: u64) -> GcPlan {
    if usage.capacity == 0 || usage.used_percent() < u64::from(policy.high_threshold_percent) {
        return GcPlan::default();
    }
    // As the kubelet: free enough to reach the low threshold.
    let used = usage.capacity - usage.available.min(usage.capacity);
    let target = usage.capacity / 100 * u64::from(policy.low_threshold_percent);
    let bytes_to_free = used.saturating_sub(target);
    let mut candidates: Vec<&Candidate> = images
        .iter()
        .filter(|c| !c.in_use)
        .filter(|c| u128::from(now.saturating_sub(c.created_at)) >= policy.min_age.as_millis())
        .collect();
    // Least recently used first; ties broken by age, then ID for a stable order.
    candidates.sort_by(|a, b| {
        (a.last_used, a.created_at, &a.id).cmp(&(b.last_used, b.created_at, &b.id))
    });
    let mut plan = GcPlan {
        bytes_to_free,
        ..GcPlan::default()
    };
    for candidate in candidates {
        if plan.bytes_freed >= bytes_to_free {
            break;
        }
        plan.delete.push(candidate.id.clone());
        plan.bytes_freed += candidate.size;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, size: u64, last_used: u64, in_use: bool) -> Candidate {
        Candidate {
            id: Digest::of(name.as_bytes()),
            size,
            last_used,
            created_at: 0,
            in_use,
        }
    }

    #[test]
    fn nothing_happens_below_the_high_threshold() {
        let usage = FsUsage {
            capacity: 1000,
            available: 160,
        };
        let plan = plan(
            &GcPolicy::default(),
            usage,
            &[image("a", 500, 1, false)],
            10_000,
        );
        assert_eq!(plan, GcPlan::default());
    }

    #[test]
    fn least_recently_used_unused_images_go_first_until_the_low_threshold() {
        // 90% used, low threshold 80%: 100 bytes to free.
        let usage = FsUsage {
            capacity: 1000,
            available: 100,
        };
        let images = [
            image("new", 60, 300, false),
            image("old", 60, 100, false),
            image("busy-oldest", 500, 1, true),
            image("middle", 60, 200, false),
        ];
        let plan = plan(&GcPolicy::default(), usage, &images, 1_000_000);
        assert_eq!(plan.bytes_to_free, 100);
        assert_eq!(plan.delete, vec![Digest::of(b"old"), Digest::of(b"middle")]);
        assert_eq!(plan.bytes_freed, 120);
    }

    #[test]
    fn young_images_are_kept() {
        let usage = FsUsage {
            capacity: 1000,
            available: 0,
        };
        let mut young = image("young", 900, 0, false);
        young.created_at = 100_000;
        let plan = plan(&GcPolicy::default(), usage, &[young], 200_000);
        assert!(plan.delete.is_empty());
    }
}
