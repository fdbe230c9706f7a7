//! Tenants in the core: their share of the slots (weight, slot quota), and
//! what they use (tasks active and on workers, stored result bytes), kept
//! up to date by every event so that fair sharing and quotas cost nothing
//! to ask.

use crate::{Core, TenantId};

/// How a tenant shares the cluster's slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantShare {
    /// Its weight: tenants with queued work get slots in proportion.
    pub weight: u32,
    /// The most tasks it may have on workers at once; `None` for no limit.
    pub max_slots: Option<u32>,
}

impl Default for TenantShare {
    fn default() -> Self {
        TenantShare {
            weight: 1,
            max_slots: None,
        }
    }
}

/// What a tenant uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Tasks still to be computed (waiting, queued or on workers).
    pub active: u64,
    /// Tasks on workers (queued there or running).
    pub on_workers: u64,
    /// Bytes of results kept for it on workers.
    pub stored_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TenantLoad {
    pub(crate) share: TenantShare,
    pub(crate) usage: TenantUsage,
}

impl TenantLoad {
    /// Whether it may have another task on a worker.
    pub(crate) fn has_slot(&self) -> bool {
        self.share
            .max_slots
            .is_none_or(|max| self.usage.on_workers < u64::from(max))
    }
}

impl<P> Core<P> {
    /// Sets a tenant's weight and slot quota (new tenants have weight 1 and
    /// no quota).
    pub fn set_tenant(
        &mut self,
        tenant: TenantId,
        share: TenantShare,
        comm: &mut impl crate::Comm<P>,
    ) {
        self.tenants.entry(tenant).or_default().share = TenantShare {
            weight: share.weight.max(1),
            ..share
        };
        self.schedule(comm);
    }

    /// A tenant's weight and slot quota (the defaults for one never set).
    pub fn tenant_share(&self, tenant: TenantId) -> TenantShare {
        self.tenants
            .get(&tenant)
            .map(|t| t.share)
            .unwrap_or_default()
    }

    /// What a tenant uses now.
    pub fn tenant_usage(&self, tenant: TenantId) -> TenantUsage {
        self.tenants
            .get(&tenant)
            .map(|t| t.usage)
            .unwrap_or_default()
    }

    pub(crate) fn tenant_mut(&mut self, tenant: TenantId) -> &mut TenantUsage {
        &mut self.tenants.entry(tenant).or_default().usage
    }

    /// The tenant whose turn it is: among those with queued work and a free
    /// slot, the one with the fewest tasks on workers for its weight
    /// (weighted fair queueing on slots); ties go to the lower id.
    pub(crate) fn next_tenant(&self) -> Option<TenantId> {
        let mut best: Option<(TenantId, u64, u64)> = None;
        for tenant in self.ready.tenants() {
            let load = self.tenants.get(&tenant).copied().unwrap_or_default();
            if !load.has_slot() {
                continue;
            }
            let (used, weight) = (load.usage.on_workers, u64::from(load.share.weight.max(1)));
            let better = match best {
                None => true,
                Some((_, best_used, best_weight)) => used * best_weight < best_used * weight,
            };
            if better {
                best = Some((tenant, used, weight));
            }
        }
        best.map(|(tenant, _, _)| tenant)
    }
}
