//! The byte budget for periods decoded outside the resident tier
//! (`VISBIN_PERIOD_WORK_BYTES`): the chunks of a window read (schedules too
//! large to hold, or not loaded yet) while their computation runs, and a
//! load until the tier holds what it decoded. Both are bounded in number
//! already (bin computations, loads at once); this bounds their bytes, so
//! that large schedules cannot stack their decoded periods in memory.
//!
//! A read charges its decoded bytes before it decodes and keeps the charge
//! while its periods are in use; a read finding the budget spent waits for
//! others to end. One read larger than the whole budget charges all of it:
//! it waits until nothing else is charged and then runs alone.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB, so that a charge fits tokio's `u32` permit counts.
const UNIT: u64 = 1024;

/// The budget.
pub struct WorkBudget {
    permits: Arc<Semaphore>,
    capacity: u32,
}

/// Bytes charged to the budget, returned when dropped.
#[derive(Debug)]
pub struct Charge {
    _permit: OwnedSemaphorePermit,
}

impl WorkBudget {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: u64) -> WorkBudget {
        let capacity = (bytes / UNIT)
            .clamp(1, (Semaphore::MAX_PERMITS as u64).min(u64::from(u32::MAX)))
            as u32;
        WorkBudget {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Charges `bytes`, waiting while the budget has not that much left.
    pub async fn charge(&self, bytes: u64) -> Charge {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.capacity)) as u32;
        Charge {
            _permit: self
                .permits
                .clone()
                .acquire_many_owned(units)
                .await
                .expect("never closed"),
        }
    }

    /// Bytes charged now.
    pub fn charged_bytes(&self) -> u64 {
        (u64::from(self.capacity) - self.permits.available_permits() as u64) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_charge_waits_until_the_budget_has_room_and_a_huge_one_runs_alone() {
        let budget = Arc::new(WorkBudget::new(10 * UNIT));
        let a = budget.charge(6 * UNIT).await;
        assert_eq!(budget.charged_bytes(), 6 * UNIT);
        let b = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(6 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!b.is_finished(), "6 + 6 KiB must not fit in 10 KiB");
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(budget.charged_bytes(), 6 * UNIT);

        let huge = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(1 << 40).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !huge.is_finished(),
            "a charge beyond the budget waits for the others"
        );
        drop(b);
        let huge = tokio::time::timeout(Duration::from_secs(5), huge)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            budget.charged_bytes(),
            10 * UNIT,
            "it takes the whole budget"
        );
        drop(huge);
        assert_eq!(budget.charged_bytes(), 0);
    }
}
