//! Which GPUs each model runs on: a pure decision from the node's GPUs and the models'
//! demands. Nothing here reads the machine; [`crate::nvml`] finds the GPUs, and the
//! supervisor turns a [`Plan`] into each worker's `CUDA_VISIBLE_DEVICES`.
//!
//! A model's quota holds on each GPU it uses, so placing it on a GPU commits its quota
//! there (a percentage: of that GPU; no quota: the whole GPU). Admission has two rules:
//! the quotas committed to a GPU may not exceed `gpu_overcommit` × its memory, and the
//! part of all GPUs' commitments that cannot be resident (what exceeds each GPU's memory)
//! must fit in the host memory left for it, where managed memory goes when it is evicted.
//!
//! ```
//! use cuvisor::gpu::GpuUuid;
//! use cuvisor::placement::{Demand, GpuDemand, NodeGpu, Policy, plan};
//! use cuvisor::size::QuotaSpec;
//!
//! const GIB: u64 = 1 << 30;
//! let node: Vec<NodeGpu> = (0..2)
//!     .map(|i| NodeGpu { index: i, uuid: GpuUuid([i as u8; 16]), memory: 80 * GIB, minor: Some(i) })
//!     .collect();
//! let two = GpuDemand::Count(2);
//! let one = GpuDemand::Count(1);
//! let demands = [
//!     Demand { model: "llama-70b", gpus: &two, quota: Some(QuotaSpec::Bytes(60 * GIB)) },
//!     Demand { model: "qwen-7b", gpus: &one, quota: Some(QuotaSpec::Bytes(16 * GIB)) },
//! ];
//! let plan = plan(&node, &demands, Policy::Pack, 1.0, 64 * GIB).unwrap();
//! assert_eq!(plan.models[0].gpus, [0, 1]);
//! assert_eq!(plan.models[1].gpus, [0]); // pack: the fullest GPU that still has room
//! assert_eq!(plan.gpus[0].committed, 76 * GIB);
//! ```

/// Declared in the configuration ([`crate::config::gpus`]); these paths stay for one release.
pub use crate::config::{GpuDemand, GpuRef, Policy};
use crate::gpu::GpuUuid;
use crate::size::{QuotaSpec, format_bytes};

/// One GPU of the node, as NVML numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeGpu {
    /// NVML's index (PCI bus order, the order `nvidia-smi` shows).
    pub index: u32,
    pub uuid: GpuUuid,
    /// Physical memory in bytes.
    pub memory: u64,
    /// The N of its device node `/dev/nvidiaN` (NVML's minor number; None where NVML
    /// gives none).
    pub minor: Option<u32>,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Pack => "pack",
            Policy::Spread => "spread",
        }
    }
}

/// One model to place.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    pub model: &'a str,
    pub gpus: &'a GpuDemand,
    pub quota: Option<QuotaSpec>,
}

/// A GPU with what the plan committed to it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPlan {
    pub gpu: NodeGpu,
    /// The quotas of the models placed on it.
    pub committed: u64,
    /// What may be committed: `gpu_overcommit` × its memory.
    pub capacity: u64,
    /// The models placed on it, in the order they were placed.
    pub models: Vec<String>,
}

/// A model and the GPUs it runs on (positions in [`Plan::gpus`], which are NVML indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPlan {
    pub model: String,
    pub gpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub policy: Policy,
    pub overcommit: f64,
    pub gpus: Vec<GpuPlan>,
    /// The placed models, in the order of the demands.
    pub models: Vec<ModelPlan>,
    /// Committed bytes that cannot be resident, all GPUs together.
    pub host_needed: u64,
    /// The host memory left for them.
    pub host_available: u64,
}

impl Plan {
    /// The plan for people: one line per GPU, one per placed model.
    pub fn lines(&self) -> Vec<String> {
        use crate::size::format_bytes as b;
        let mut lines = vec![format!(
            "placement: {}, gpu_overcommit {}, host memory for what cannot be resident: {} needed of {}",
            self.policy.as_str(),
            self.overcommit,
            b(self.host_needed),
            b(self.host_available)
        )];
        for g in &self.gpus {
            lines.push(format!(
                "GPU {} {}: {} committed of {} ({} memory): {}",
                g.gpu.index,
                g.gpu.uuid,
                b(g.committed),
                b(g.capacity),
                b(g.gpu.memory),
                if g.models.is_empty() {
                    "-".to_owned()
                } else {
                    g.models.join(", ")
                }
            ));
        }
        for m in &self.models {
            let gpus: Vec<String> = m
                .gpus
                .iter()
                .map(|&g| self.gpus[g].gpu.index.to_string())
                .collect();
            lines.push(format!("model {}: GPU {}", m.model, gpus.join(", ")));
        }
        lines
    }

    /// The UUIDs of a model's GPUs, in its order: its workers' `CUDA_VISIBLE_DEVICES`.
    pub fn uuids(&self, model: &str) -> Option<Vec<GpuUuid>> {
        let m = self.models.iter().find(|m| m.model == model)?;
        Some(m.gpus.iter().map(|&g| self.gpus[g].gpu.uuid).collect())
    }

    /// The minor numbers (`/dev/nvidiaN`) of the GPUs `model` was placed on; None if the
    /// model is not placed, or NVML did not give one of them.
    pub fn minors(&self, model: &str) -> Option<Vec<u32>> {
        let m = self.models.iter().find(|m| m.model == model)?;
        m.gpus.iter().map(|&g| self.gpus[g].gpu.minor).collect()
    }
}

impl Plan {
    /// The plan with `model`'s quota changed from `from` to `to`, if its GPUs can take it:
    /// each within `gpu_overcommit` × its memory, and what cannot be resident within the
    /// host memory for it. A model not placed changes nothing here.
    pub fn requota(
        &self,
        model: &str,
        from: Option<QuotaSpec>,
        to: Option<QuotaSpec>,
    ) -> Result<Plan, String> {
        let Some(placed) = self.models.iter().find(|m| m.model == model) else {
            return Ok(self.clone());
        };
        let mut next = self.clone();
        for &g in &placed.gpus {
            let gpu = &mut next.gpus[g];
            let memory = gpu.gpu.memory;
            gpu.committed = gpu.committed - commitment(from, memory).min(gpu.committed)
                + commitment(to, memory);
            if gpu.committed > gpu.capacity {
                return Err(format!(
                    "GPU {} would have {} committed, beyond its {} (gpu_overcommit {} of {})",
                    gpu.gpu.index,
                    format_bytes(gpu.committed),
                    format_bytes(gpu.capacity),
                    self.overcommit,
                    format_bytes(memory)
                ));
            }
        }
        next.host_needed = next
            .gpus
            .iter()
            .map(|g| g.committed.saturating_sub(g.gpu.memory))
            .sum();
        if next.host_needed > next.host_available {
            return Err(format!(
                "{} of the GPUs' commitments could not be resident, beyond the {} of host memory for them",
                format_bytes(next.host_needed),
                format_bytes(next.host_available)
            ));
        }
        Ok(next)
    }
}

/// Why a configuration cannot be placed. Every one names the numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "model {model}: gpus names GPU {gpu}, which this node does not have (it has {count} GPU(s){list})"
    )]
    UnknownGpu {
        model: String,
        gpu: String,
        count: usize,
        list: String,
    },
    #[error("model {model}: gpus names GPU {gpu} twice")]
    Twice { model: String, gpu: String },
    #[error("model {model}: gpus = {wanted}, but this node has {count} GPU(s)")]
    NotEnoughGpus {
        model: String,
        wanted: u32,
        count: usize,
    },
    #[error(
        "model {model}: GPU {index} ({uuid}) cannot take its quota of {need}: {committed} of its \
         {capacity} ({overcommit}× its {memory}) is committed already"
    )]
    Full {
        model: String,
        index: u32,
        uuid: GpuUuid,
        need: String,
        committed: String,
        capacity: String,
        overcommit: f64,
        memory: String,
    },
    #[error(
        "model {model}: gpus = {wanted} needs {wanted} GPU(s) with room for its quota, and {found} \
         have it ({detail}; gpu_overcommit = {overcommit})"
    )]
    NoRoom {
        model: String,
        wanted: u32,
        found: usize,
        detail: String,
        overcommit: f64,
    },
    #[error(
        "the GPU memory committed beyond the GPUs' own ({needed}: {detail}) does not fit in the host \
         memory left for it ({available}); lower gpu_overcommit, the quotas, or the models' \
         memory_limit"
    )]
    Host {
        needed: String,
        detail: String,
        available: String,
    },
}

/// What a model commits on a GPU of `memory` bytes: its quota there, or the whole GPU
/// without one.
pub fn commitment(quota: Option<QuotaSpec>, memory: u64) -> u64 {
    quota.map_or(memory, |q| q.bytes(memory))
}

/// Places `demands` on `node`: models naming their GPUs first (in order), then those
/// asking for a number of GPUs, in order, each GPU chosen by `policy` among those with
/// room. Every error is reported, not just the first; a model that cannot be placed
/// commits nothing.
pub fn plan(
    node: &[NodeGpu],
    demands: &[Demand],
    policy: Policy,
    overcommit: f64,
    host_available: u64,
) -> Result<Plan, Vec<PlanError>> {
    let mut gpus: Vec<GpuPlan> = node
        .iter()
        .map(|&gpu| GpuPlan {
            gpu,
            committed: 0,
            capacity: (gpu.memory as f64 * overcommit) as u64,
            models: Vec::new(),
        })
        .collect();
    let mut errors = Vec::new();
    let mut placed: Vec<Option<Vec<usize>>> = vec![None; demands.len()];
    let named = demands
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.gpus, GpuDemand::These(_)));
    let counted = demands
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.gpus, GpuDemand::Count(_)));
    for (k, d) in named.chain(counted) {
        let chosen = match d.gpus {
            GpuDemand::These(refs) => named_gpus(node, d, refs, &gpus, overcommit),
            GpuDemand::Count(n) => counted_gpus(d, *n, &gpus, policy, overcommit),
        };
        match chosen {
            Ok(chosen) => {
                for &g in &chosen {
                    gpus[g].committed += commitment(d.quota, gpus[g].gpu.memory);
                    gpus[g].models.push(d.model.to_owned());
                }
                placed[k] = Some(chosen);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    let beyond: Vec<(u32, u64)> = gpus
        .iter()
        .filter(|g| g.committed > g.gpu.memory)
        .map(|g| (g.gpu.index, g.committed - g.gpu.memory))
        .collect();
    let host_needed = beyond.iter().map(|&(_, b)| b).sum();
    if host_needed > host_available {
        errors.push(PlanError::Host {
            needed: format_bytes(host_needed),
            detail: beyond
                .iter()
                .map(|&(i, b)| format!("GPU {i} {}", format_bytes(b)))
                .collect::<Vec<_>>()
                .join(", "),
            available: format_bytes(host_available),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        policy,
        overcommit,
        gpus,
        models: demands
            .iter()
            .zip(placed)
            .map(|(d, g)| ModelPlan {
                model: d.model.to_owned(),
                gpus: g.unwrap_or_default(),
            })
            .collect(),
        host_needed,
        host_available,
    })
}

fn named_gpus(
    node: &[NodeGpu],
    d: &Demand,
    refs: &[GpuRef],
    gpus: &[GpuPlan],
    overcommit: f64,
) -> Result<Vec<usize>, Vec<PlanError>> {
    let mut chosen: Vec<usize> = Vec::new();
    let mut errors = Vec::new();
    for r in refs {
        let found = node.iter().position(|g| match r {
            GpuRef::Index(i) => g.index == *i,
            GpuRef::Uuid(u) => g.uuid == *u,
        });
        match found {
            None => errors.push(PlanError::UnknownGpu {
                model: d.model.to_owned(),
                gpu: r.to_string(),
                count: node.len(),
                list: if node.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        node.iter()
                            .map(|g| format!("{} {}", g.index, g.uuid))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            }),
            Some(g) if chosen.contains(&g) => errors.push(PlanError::Twice {
                model: d.model.to_owned(),
                gpu: r.to_string(),
            }),
            Some(g) => {
                let p = &gpus[g];
                let need = commitment(d.quota, p.gpu.memory);
                if p.committed.saturating_add(need) > p.capacity {
                    errors.push(full(d, p, need, overcommit));
                }
                chosen.push(g);
            }
        }
    }
    if errors.is_empty() {
        Ok(chosen)
    } else {
        Err(errors)
    }
}

fn full(d: &Demand, p: &GpuPlan, need: u64, overcommit: f64) -> PlanError {
    PlanError::Full {
        model: d.model.to_owned(),
        index: p.gpu.index,
        uuid: p.gpu.uuid,
        need: format_bytes(need),
        committed: format_bytes(p.committed),
        capacity: format_bytes(p.capacity),
        overcommit,
        memory: format_bytes(p.gpu.memory),
    }
}

fn counted_gpus(
    d: &Demand,
    wanted: u32,
    gpus: &[GpuPlan],
    policy: Policy,
    overcommit: f64,
) -> Result<Vec<usize>, Vec<PlanError>> {
    if wanted as usize > gpus.len() {
        return Err(vec![PlanError::NotEnoughGpus {
            model: d.model.to_owned(),
            wanted,
            count: gpus.len(),
        }]);
    }
    let room = |g: &GpuPlan| {
        g.committed
            .saturating_add(commitment(d.quota, g.gpu.memory))
            <= g.capacity
    };
    let mut with_room: Vec<usize> = (0..gpus.len()).filter(|&g| room(&gpus[g])).collect();
    if with_room.len() < wanted as usize {
        return Err(vec![PlanError::NoRoom {
            model: d.model.to_owned(),
            wanted,
            found: with_room.len(),
            detail: gpus
                .iter()
                .map(|g| {
                    format!(
                        "GPU {}: {} of {} committed, {} needed",
                        g.gpu.index,
                        format_bytes(g.committed),
                        format_bytes(g.capacity),
                        format_bytes(commitment(d.quota, g.gpu.memory))
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            overcommit,
        }]);
    }
    // Stable sorts: among equals, the lower index first.
    match policy {
        Policy::Pack => with_room.sort_by_key(|&g| std::cmp::Reverse(gpus[g].committed)),
        Policy::Spread => with_room.sort_by(|&a, &b| {
            // committed / memory, compared without division
            let (a, b) = (&gpus[a], &gpus[b]);
            (a.committed as u128 * b.gpu.memory as u128)
                .cmp(&(b.committed as u128 * a.gpu.memory as u128))
        }),
    }
    with_room.truncate(wanted as usize);
    with_room.sort_unstable();
    Ok(with_room)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(n: u32, memory: u64) -> Vec<NodeGpu> {
        (0..n)
            .map(|i| NodeGpu {
                index: i,
                uuid: GpuUuid([i as u8 + 1; 16]),
                memory,
                minor: Some(i),
            })
            .collect()
    }

    fn bytes(gib: u64) -> Option<QuotaSpec> {
        Some(QuotaSpec::Bytes(gib * GIB))
    }

    /// The issue's node: 4 GPUs of 16 GiB, six models, then a seventh that does not fit.
    fn six() -> Vec<(String, GpuDemand, Option<QuotaSpec>)> {
        [
            ("a", 2, 8),
            ("b", 1, 6),
            ("c", 1, 4),
            ("d", 1, 10),
            ("e", 2, 4),
            ("f", 1, 8),
        ]
        .into_iter()
        .map(|(m, n, q)| (m.to_owned(), GpuDemand::Count(n), bytes(q)))
        .collect()
    }

    fn demands(spec: &[(String, GpuDemand, Option<QuotaSpec>)]) -> Vec<Demand<'_>> {
        spec.iter()
            .map(|(m, g, q)| Demand {
                model: m,
                gpus: g,
                quota: *q,
            })
            .collect()
    }

    fn placement(p: &Plan) -> Vec<(&str, Vec<usize>)> {
        p.models
            .iter()
            .map(|m| (m.model.as_str(), m.gpus.clone()))
            .collect()
    }

    fn committed(p: &Plan) -> Vec<u64> {
        p.gpus.iter().map(|g| g.committed / GIB).collect()
    }

    #[test]
    fn pack_fills_the_fullest_gpu_with_room() {
        let spec = six();
        let p = plan(&node(4, 16 * GIB), &demands(&spec), Policy::Pack, 1.0, 0).unwrap();
        assert_eq!(
            placement(&p),
            [
                ("a", vec![0, 1]),
                ("b", vec![0]),
                ("c", vec![1]),
                ("d", vec![2]),
                ("e", vec![1, 2]),
                ("f", vec![3]),
            ]
        );
        assert_eq!(committed(&p), [14, 16, 14, 8]);
        assert_eq!(p.host_needed, 0);
        assert_eq!(p.uuids("e").unwrap(), [GpuUuid([2; 16]), GpuUuid([3; 16])]);
    }

    #[test]
    fn spread_takes_the_least_committed_gpu() {
        let spec = six();
        let p = plan(&node(4, 16 * GIB), &demands(&spec), Policy::Spread, 1.0, 0).unwrap();
        assert_eq!(
            placement(&p),
            [
                ("a", vec![0, 1]),
                ("b", vec![2]),
                ("c", vec![3]),
                ("d", vec![3]),
                ("e", vec![0, 2]),
                ("f", vec![1]),
            ]
        );
        assert_eq!(committed(&p), [12, 16, 10, 14]);
    }

    #[test]
    fn a_seventh_model_that_does_not_fit_is_refused_with_the_numbers() {
        let mut spec = six();
        spec.push(("g".into(), GpuDemand::Count(1), bytes(9)));
        let err = plan(&node(4, 16 * GIB), &demands(&spec), Policy::Pack, 1.0, 0).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(
            err[0].to_string(),
            "model g: gpus = 1 needs 1 GPU(s) with room for its quota, and 0 have it (GPU 0: 14.0 GiB \
             of 16.0 GiB committed, 9.0 GiB needed; GPU 1: 16.0 GiB of 16.0 GiB committed, 9.0 GiB \
             needed; GPU 2: 14.0 GiB of 16.0 GiB committed, 9.0 GiB needed; GPU 3: 8.0 GiB of \
             16.0 GiB committed, 9.0 GiB needed; gpu_overcommit = 1)"
        );
        let err = plan(&node(4, 16 * GIB), &demands(&spec), Policy::Spread, 1.0, 0).unwrap_err();
        assert!(
            err.len() == 1
                && err[0]
                    .to_string()
                    .contains("GPU 3: 14.0 GiB of 16.0 GiB committed"),
            "{err:?}"
        );
    }

    #[test]
    fn overcommit_admits_more_if_the_host_can_hold_the_excess() {
        let spec: Vec<_> = (0..4)
            .map(|i| (format!("m{i}"), GpuDemand::Count(1), bytes(12)))
            .collect();
        // 48 GiB of quotas on two 16 GiB GPUs at 2x: 16 GiB beyond the GPUs.
        let p = plan(
            &node(2, 16 * GIB),
            &demands(&spec),
            Policy::Pack,
            2.0,
            16 * GIB,
        )
        .unwrap();
        assert_eq!(committed(&p), [24, 24]);
        assert_eq!(p.host_needed, 16 * GIB);
        let err = plan(
            &node(2, 16 * GIB),
            &demands(&spec),
            Policy::Pack,
            2.0,
            15 * GIB,
        )
        .unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "the GPU memory committed beyond the GPUs' own (16.0 GiB: GPU 0 8.0 GiB, GPU 1 8.0 GiB) \
             does not fit in the host memory left for it (15.0 GiB); lower gpu_overcommit, the \
             quotas, or the models' memory_limit"
        );
        // At 1x the third model does not fit at all.
        assert!(matches!(
            plan(&node(2, 16 * GIB), &demands(&spec), Policy::Pack, 1.0, 0).unwrap_err()[..],
            [PlanError::NoRoom { .. }, PlanError::NoRoom { .. }]
        ));
    }

    #[test]
    fn named_gpus_are_placed_first_and_checked() {
        let n = node(2, 16 * GIB);
        let spec = vec![
            ("count".to_owned(), GpuDemand::Count(1), bytes(10)),
            (
                "named".to_owned(),
                GpuDemand::These(vec![GpuRef::Uuid(GpuUuid([1; 16]))]),
                bytes(10),
            ),
        ];
        let p = plan(&n, &demands(&spec), Policy::Pack, 1.0, 0).unwrap();
        assert_eq!(placement(&p), [("count", vec![1]), ("named", vec![0])]);
        let bad = vec![
            (
                "x".to_owned(),
                GpuDemand::These(vec![GpuRef::Index(1), GpuRef::Index(1), GpuRef::Index(7)]),
                bytes(1),
            ),
            ("y".to_owned(), GpuDemand::Count(3), bytes(1)),
            (
                "z".to_owned(),
                GpuDemand::These(vec![GpuRef::Index(0)]),
                None,
            ),
            (
                "w".to_owned(),
                GpuDemand::These(vec![GpuRef::Index(0)]),
                bytes(1),
            ),
        ];
        let errors: Vec<String> = plan(&n, &demands(&bad), Policy::Pack, 1.0, 0)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "model x: gpus names GPU 1 twice".to_owned(),
                format!(
                    "model x: gpus names GPU 7, which this node does not have (it has 2 GPU(s): 0 {}, 1 {})",
                    GpuUuid([1; 16]),
                    GpuUuid([2; 16])
                ),
                format!(
                    "model w: GPU 0 ({}) cannot take its quota of 1.0 GiB: 16.0 GiB of its 16.0 GiB \
                     (1× its 16.0 GiB) is committed already",
                    GpuUuid([1; 16])
                ),
                "model y: gpus = 3, but this node has 2 GPU(s)".to_owned(),
            ]
        );
    }

    #[test]
    fn a_percentage_commits_its_share_of_each_gpu() {
        let mut n = node(2, 16 * GIB);
        n[1].memory = 80 * GIB;
        let spec = vec![(
            "p".to_owned(),
            GpuDemand::Count(2),
            Some(QuotaSpec::Percent(25)),
        )];
        let p = plan(&n, &demands(&spec), Policy::Pack, 1.0, 0).unwrap();
        assert_eq!(committed(&p), [4, 20]);
    }

    /// A quota changed live is checked against the model's GPUs as a placement would be.
    #[test]
    fn a_quota_change_must_fit_the_models_gpus() {
        let node = node(2, 16 * GIB);
        let spec = vec![
            ("a".to_owned(), GpuDemand::Count(1), bytes(8)),
            ("b".to_owned(), GpuDemand::Count(1), bytes(8)),
        ];
        let p = plan(&node, &demands(&spec), Policy::Pack, 1.0, 0).unwrap();
        assert_eq!(committed(&p), [16, 0]);
        let up = p.requota("a", bytes(8), bytes(6)).unwrap();
        assert_eq!(committed(&up), [14, 0]);
        let err = p.requota("a", bytes(8), bytes(10)).unwrap_err();
        assert_eq!(
            err,
            "GPU 0 would have 18.0 GiB committed, beyond its 16.0 GiB (gpu_overcommit 1 of 16.0 GiB)"
        );
        // With room to overcommit, the host must hold what cannot be resident.
        let p = plan(&node, &demands(&spec), Policy::Pack, 2.0, GIB).unwrap();
        assert!(p.requota("a", bytes(8), bytes(9)).is_ok());
        assert_eq!(
            p.requota("a", bytes(8), bytes(10)).unwrap_err(),
            "2.0 GiB of the GPUs' commitments could not be resident, beyond the 1.0 GiB of host memory for them"
        );
        // No quota commits the whole GPU; a model not placed changes nothing.
        assert!(p.requota("a", bytes(8), None).is_err());
        assert_eq!(p.requota("zz", None, bytes(99)).unwrap(), p);
    }
}
