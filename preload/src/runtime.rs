//! The shim's state in this process: configuration, the model's ledger, records. Built on
//! first use (or by the constructor, whichever comes first); rebuilt in a forked child,
//! which is a new CUDA process owning none of its parent's allocations (it joins the same
//! model's ledger with a slot of its own).

use crate::driver;
use crate::ffi::*;
use crate::records::{PointerTable, Records};
use cuvisor_common::contract::{Contract, LogLevel, Mode};
use cuvisor_common::gpu::GpuUuid;
use cuvisor_common::ledger::{
    Attachment, CreateOptions, GpuIndex, LedgerError, LedgerFile, Refusal,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicPtr, AtomicU8, Ordering};
use std::sync::{Once, OnceLock};

const MAX_DEVICES: usize = 64;

pub struct Runtime {
    pub config: Contract,
    /// This process's place in the model's ledger, opened on first need.
    account: OnceLock<Result<Attachment<'static>, LedgerError>>,
    /// Device pointers the shim charged (plain, pitched, managed, stream-ordered).
    pub ptrs: PointerTable,
    /// VMM physical handles (cuMemCreate).
    pub handles: Records,
    /// CUDA arrays and mipmapped arrays.
    pub arrays: Records,
    /// VMM mappings: start address -> (size, handle).
    pub mappings: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Memory pools -> the device ordinal they allocate on.
    pub pools: Mutex<HashMap<usize, CUdevice>>,
    /// Devices this process sees; -1 not known yet.
    device_count: AtomicI8,
    /// Per device ordinal: concurrent managed access? -1 not asked yet.
    managed_access: [AtomicI8; MAX_DEVICES],
    /// Per device ordinal: its entry in the ledger, plus one (0: not met yet). Ordinals
    /// are fixed for the life of a process (`CUDA_VISIBLE_DEVICES` is read at `cuInit`).
    gpus: [AtomicU8; MAX_DEVICES],
    /// Whether this process's hibernation thread was started.
    pub listener: AtomicBool,
    warned_no_managed: AtomicBool,
    warned_ipc: AtomicBool,
}

pub enum Active {
    /// `CUVISOR_MODE=off`: forward untouched.
    Off,
    /// The configuration is invalid: CUDA initialization fails.
    Failed,
    On(&'static Runtime),
}

/// Why an allocation is not charged.
pub enum NotCharged {
    /// Over the quota, or on a GPU the ledger cannot name: the call answers out of memory
    /// (the log says which).
    Quota,
    /// The ledger cannot be used: CUDA initialization fails.
    NoLedger,
    /// The driver could not say which device the calling thread uses: its own answer
    /// (`CUDA_ERROR_INVALID_CONTEXT` without a current context).
    Driver(CUresult),
}

/// What runs once this process has attached to its model's ledger, where hibernation is
/// on: set at load by the layer above (the hibernation listener), so that the runtime
/// names nothing above it.
pub type OnAttach = fn(&Runtime, &Attachment<'_>);
static ON_ATTACH: OnceLock<OnAttach> = OnceLock::new();

/// Registers the on-attach callback (once; later calls are ignored).
pub fn set_on_attach(f: OnAttach) {
    let _ = ON_ATTACH.set(f);
}

static INIT: Once = Once::new();
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());
static CONFIG_ERRORS: OnceLock<Vec<String>> = OnceLock::new();
static ERRORS_REPORTED: AtomicBool = AtomicBool::new(false);

impl Runtime {
    fn new(config: Contract) -> Runtime {
        Runtime {
            config,
            account: OnceLock::new(),
            ptrs: PointerTable::default(),
            handles: Records::default(),
            arrays: Records::default(),
            mappings: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(HashMap::new()),
            device_count: AtomicI8::new(-1),
            managed_access: [const { AtomicI8::new(-1) }; MAX_DEVICES],
            gpus: [const { AtomicU8::new(0) }; MAX_DEVICES],
            listener: AtomicBool::new(false),
            warned_no_managed: AtomicBool::new(false),
            warned_ipc: AtomicBool::new(false),
        }
    }

    /// This process's attachment to the model's ledger: opened (or created with this
    /// process's quota) the first time it is needed. An unusable ledger is reported once.
    #[inline]
    pub fn account(&self) -> Option<&Attachment<'static>> {
        match self.account.get() {
            Some(Ok(a)) => Some(a),
            _ => self.account_first_time(),
        }
    }

    #[cold]
    #[inline(never)]
    fn account_first_time(&self) -> Option<&Attachment<'static>> {
        let attached = self.account.get_or_init(|| {
            let c = &self.config;
            let options = CreateOptions {
                group: c.ledger_group,
            };
            let file = LedgerFile::open_or_create(&c.ledger_dir, &c.model, c.quota, options)?;
            let file: &'static LedgerFile = Box::leak(Box::new(file));
            file.attach()
        });
        match attached {
            Ok(a) => {
                if self.config.hibernate {
                    match ON_ATTACH.get() {
                        Some(on_attach) => on_attach(self, a),
                        // Only if the process attached before the shim's constructor ran.
                        None => log::error!(
                            "model {}: attached before the shim was loaded: this process will not answer hibernate and wake",
                            self.config.model
                        ),
                    }
                }
                Some(a)
            }
            Err(e) => {
                static REPORTED: AtomicBool = AtomicBool::new(false);
                if !REPORTED.swap(true, Ordering::Relaxed) {
                    crate::logging::write_stderr(&format!(
                        "cuvisor: error: model {}: {e}; CUDA initialization fails (the process must not run \
                         without its quota)\n",
                        self.config.model
                    ));
                }
                None
            }
        }
    }

    /// The remembered ledger entry of device ordinal `dev`, if any. Acquire pairs with
    /// the Release in `remember`: a thread that finds the entry sees it whole.
    /// The ledger entry of a device this process has met (charged or asked about), without
    /// meeting it.
    #[inline]
    pub fn cached(&self, dev: CUdevice) -> Option<GpuIndex> {
        let slot = self.gpus.get(usize::try_from(dev).ok()?)?;
        slot.load(Ordering::Acquire)
            .checked_sub(1)
            .and_then(GpuIndex::new)
    }

    fn remember(&self, dev: CUdevice, index: GpuIndex) {
        if let Some(slot) = usize::try_from(dev).ok().and_then(|d| self.gpus.get(d)) {
            slot.store(index.get() as u8 + 1, Ordering::Release);
        }
    }

    /// The ledger entry of device ordinal `dev`: found by the GPU's UUID (registered with
    /// its memory the first time the model meets it), then remembered for the process.
    /// A placed model (`CUVISOR_GPUS`) may use only its GPUs: the supervisor admitted its
    /// quota on those and no other.
    #[inline]
    pub fn gpu(&self, dev: CUdevice) -> Result<GpuIndex, NotCharged> {
        match self.cached(dev) {
            Some(index) => Ok(index),
            None => self.meet_gpu(dev),
        }
    }

    #[cold]
    #[inline(never)]
    fn meet_gpu(&self, dev: CUdevice) -> Result<GpuIndex, NotCharged> {
        let account = self.account().ok_or(NotCharged::NoLedger)?;
        // An ordinal the driver cannot name is its own error (CUDA_ERROR_INVALID_DEVICE).
        let uuid = driver::device_uuid(dev).map_err(NotCharged::Driver)?;
        let physical = driver::physical_memory(dev).map_err(NotCharged::Driver)?;
        if let Some(placed) = &self.config.gpus
            && !placed.contains(&uuid)
        {
            log::error!(
                "model {}: device {dev} is {uuid}, which is not one of the GPUs the model was \
                 placed on (CUVISOR_GPUS): nothing can be allocated on it",
                self.config.model
            );
            return Err(NotCharged::Quota);
        }
        let index = self.register(account, uuid, physical, dev)?;
        self.remember(dev, index);
        Ok(index)
    }

    /// The device ordinal under which this process charged ledger entry `gpu`, if any.
    pub fn ordinal_of(&self, gpu: GpuIndex) -> Option<CUdevice> {
        let wanted = gpu.get() as u8 + 1;
        let at = self
            .gpus
            .iter()
            .position(|g| g.load(Ordering::Acquire) == wanted)?;
        CUdevice::try_from(at).ok()
    }

    /// The ledger entry of device ordinal `dev` if the model has met that GPU: a query
    /// (memory information) never registers one.
    fn known_gpu(&self, dev: CUdevice) -> Option<GpuIndex> {
        if let Some(index) = self.cached(dev) {
            return Some(index);
        }
        let uuid = driver::device_uuid(dev).ok()?;
        let index = self.account()?.ledger().find_gpu(uuid)?;
        self.remember(dev, index);
        Some(index)
    }

    fn register(
        &self,
        account: &Attachment<'static>,
        uuid: GpuUuid,
        physical: u64,
        dev: CUdevice,
    ) -> Result<GpuIndex, NotCharged> {
        let own = self.device_quota(dev);
        account
            .ledger()
            .register_gpu_with_quota(uuid, physical, own)
            .map_err(|e| {
                log::error!("model {}: {e}", self.config.model);
                NotCharged::Quota
            })
    }

    /// The ledger entry of the calling thread's current device. A process that sees one
    /// device needs no driver call to know which: every context is on device 0 (without
    /// a context, the allocation's own call then answers the driver's error, and its
    /// charge is rolled back).
    #[inline]
    pub fn current_gpu(&self) -> Result<(CUdevice, GpuIndex), NotCharged> {
        let dev = self.current_device().map_err(NotCharged::Driver)?;
        Ok((dev, self.gpu(dev)?))
    }

    /// The calling thread's current device: 0 where the process sees one device (no
    /// driver call), else the driver's answer.
    #[inline]
    pub fn current_device(&self) -> driver::DriverResult<CUdevice> {
        if self.sees_one_device() {
            Ok(0)
        } else {
            driver::current_device()
        }
    }

    /// Whether the process sees exactly one device; asked of the driver until it answers
    /// (the count is fixed once `cuInit` has succeeded).
    fn sees_one_device(&self) -> bool {
        match self.device_count.load(Ordering::Relaxed) {
            -1 => match driver::device_count() {
                Ok(n) => {
                    self.device_count
                        .store(n.clamp(0, 127) as i8, Ordering::Relaxed);
                    n == 1
                }
                Err(_) => false,
            },
            n => n == 1,
        }
    }

    /// Charges `bytes` to the model on `gpu`, or refuses with the one log line the user
    /// sees.
    pub fn reserve(&self, gpu: GpuIndex, bytes: u64, what: &str) -> Result<(), NotCharged> {
        let account = self.account().ok_or(NotCharged::NoLedger)?;
        account.try_reserve(gpu, bytes).map_err(|r: Refusal| {
            log::warn!(
                "model {}: {what} of {} bytes refused on {}: {} of the quota's {} bytes in use there",
                self.config.model,
                r.requested,
                account.ledger().gpu_uuid(gpu),
                r.used,
                r.quota
            );
            NotCharged::Quota
        })
    }

    pub fn release(&self, gpu: GpuIndex, bytes: u64) {
        if let Some(account) = self.account() {
            account.release(gpu, bytes);
        }
    }

    /// The virtual story of one GPU (its entry, if the model has met it, and its physical
    /// memory): total = min(quota there, physical), free = total - what the whole model
    /// holds there, saturating; (free, total). None without a quota: the driver's own
    /// numbers stand.
    fn virtual_memory(&self, gpu: Option<GpuIndex>, physical: u64) -> Option<(u64, u64)> {
        let ledger = self.account()?.ledger();
        let (quota, used) = match gpu {
            Some(g) => (ledger.gpu_quota(g)?, ledger.gpu_used(g)),
            // Not met yet: its quota as it would be registered, nothing used.
            None => (ledger.quota()?.bytes(physical).max(1), 0),
        };
        let total = quota.min(physical);
        Some((total.saturating_sub(used), total))
    }

    /// The virtual story of device ordinal `dev`: (free, total).
    pub fn device_memory(&self, dev: CUdevice, physical: u64) -> Option<(u64, u64)> {
        match (self.known_gpu(dev), self.device_quota(dev)) {
            // Its own quota (HAMi's limit of that device), not met yet: nothing used.
            (None, Some(own)) => Some((own.min(physical), own.min(physical))),
            (gpu, _) => self.virtual_memory(gpu, physical),
        }
    }

    /// Device ordinal `dev`'s own quota, where the limits differ between devices.
    fn device_quota(&self, dev: CUdevice) -> Option<u64> {
        let dev = usize::try_from(dev).ok()?;
        self.config.device_quotas.get(dev).copied().flatten()
    }

    /// The virtual story of an NVML device, found by its UUID: (total, free, used).
    pub fn nvml_memory(&self, device: nvmlDevice_t, physical: u64) -> Option<(u64, u64, u64)> {
        let ledger = self.account()?.ledger();
        let Some(uuid) = driver::nvml_uuid(device) else {
            // A MIG device (its UUID is `MIG-…`): not supported; the safe side is the
            // whole model's usage.
            let used = ledger.used();
            let total = ledger.quota()?.bytes(physical).max(1).min(physical);
            return Some((total, total.saturating_sub(used), used));
        };
        let gpu = ledger.find_gpu(uuid);
        let (free, total) = self.virtual_memory(gpu, physical)?;
        Some((total, free, gpu.map_or(0, |g| ledger.gpu_used(g))))
    }

    /// Whether plain allocations on `dev` are to become managed ones there.
    #[inline]
    pub fn redirects(&self, dev: CUdevice) -> bool {
        if self.config.mode != Mode::Managed {
            return false;
        }
        self.managed_access_of(dev)
    }

    fn managed_access_of(&self, dev: CUdevice) -> bool {
        let Some(slot) = usize::try_from(dev)
            .ok()
            .and_then(|d| self.managed_access.get(d))
        else {
            return false;
        };
        let mut access = slot.load(Ordering::Relaxed);
        if access < 0 {
            access = driver::device_attribute(CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, dev)
                .map_or(0, |v| (v != 0) as i8);
            slot.store(access, Ordering::Relaxed);
        }
        if access == 0 && !self.warned_no_managed.swap(true, Ordering::Relaxed) {
            log::warn!(
                "model {}: device {dev} has no concurrent managed access: allocations stay device \
                 memory (quota enforced, no oversubscription)",
                self.config.model
            );
        }
        access == 1
    }

    /// Says once per process why IPC on a redirected allocation failed.
    pub fn ipc_hint(&self) {
        if !self.warned_ipc.swap(true, Ordering::Relaxed) {
            log::warn!(
                "model {}: cuIpcGetMemHandle failed on memory cuvisor placed in managed memory, \
                 which CUDA IPC cannot export; run this model with CUVISOR_MODE=device",
                self.config.model
            );
        }
    }
}

fn init() {
    INIT.call_once(|| {
        // The shim has its own copy of std: this hook sees only the shim's panics (each
        // becomes CUDA_ERROR_UNKNOWN at the FFI boundary), and prints one line, not a
        // backtrace, whatever the host's RUST_BACKTRACE says.
        std::panic::set_hook(Box::new(|info| {
            crate::logging::write_stderr(&format!("cuvisor: error: internal error: {info}\n"));
        }));
        let lookup = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        match Contract::from_lookup(lookup) {
            Ok(config) => {
                crate::logging::init(config.log_level);
                for w in &config.warnings {
                    log::warn!("model {}: {w}", config.model);
                }
                let rt = Box::into_raw(Box::new(Runtime::new(config)));
                RUNTIME.store(rt, Ordering::Release);
            }
            Err(errors) => {
                crate::logging::init(LogLevel::Error);
                let _ = CONFIG_ERRORS.set(errors);
            }
        }
        // SAFETY: registering a plain function; it runs in the child after fork.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// A forked child starts over: its parent's allocations are not its own (the driver does
/// not let a child use them), and locks another parent thread held are never released.
/// It lets go of the parent's ledger descriptor, so that the parent's liveness lock
/// follows the parent alone, and attaches on its own when it first needs to.
extern "C" fn after_fork_in_child() {
    let old = RUNTIME.load(Ordering::Acquire);
    if !old.is_null() {
        // SAFETY: `old` points to a leaked Runtime; it is read, never freed.
        let old = unsafe { &*old };
        if let Some(Ok(account)) = old.account.get() {
            account.ledger().forget_in_forked_child();
        }
        RUNTIME.store(
            Box::into_raw(Box::new(Runtime::new(old.config.clone()))),
            Ordering::Release,
        );
    }
}

/// At normal exit: leave the model's ledger (everything this process held goes back).
pub fn leave_ledger() {
    let rt = RUNTIME.load(Ordering::Acquire);
    if rt.is_null() {
        return;
    }
    // SAFETY: a Runtime is never freed once published.
    if let Some(Ok(account)) = unsafe { &*rt }.account.get() {
        account.detach();
    }
}

/// The state every wrapper starts from: one atomic load once initialized.
#[inline]
pub fn active() -> Active {
    let rt = RUNTIME.load(Ordering::Acquire);
    if rt.is_null() {
        return active_first_time();
    }
    // SAFETY: a Runtime is never freed once published.
    let rt: &'static Runtime = unsafe { &*rt };
    if rt.config.mode == Mode::Off {
        Active::Off
    } else {
        Active::On(rt)
    }
}

#[cold]
#[inline(never)]
fn active_first_time() -> Active {
    init();
    if RUNTIME.load(Ordering::Acquire).is_null() {
        report_config_errors();
        return Active::Failed;
    }
    active()
}

/// True once the configuration says `CUVISOR_MODE=off`: then `dlsym` and the resolvers
/// hand out the real functions, and only direct binding goes through a wrapper at all.
/// Reads one atomic; never initializes (it runs inside `dlsym`).
pub fn is_off() -> bool {
    let rt = RUNTIME.load(Ordering::Acquire);
    // SAFETY: a Runtime is never freed once published.
    !rt.is_null() && unsafe { (*rt).config.mode } == Mode::Off
}

/// Prints the configuration errors once per process, when CUDA is first initialized.
fn report_config_errors() {
    if ERRORS_REPORTED.swap(true, Ordering::AcqRel) {
        return;
    }
    for e in CONFIG_ERRORS.get().into_iter().flatten() {
        crate::logging::write_stderr(&format!(
            "cuvisor: error: {e}; CUDA initialization fails (the process must not run without its quota)\n"
        ));
    }
}

/// Runs from the library's constructor: configuration is read when the library loads.
pub fn load() {
    init();
}
