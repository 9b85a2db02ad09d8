//! The shim's state in this process: configuration, the model's ledger, records. Built on
//! first use (or by the constructor, whichever comes first); rebuilt in a forked child,
//! which is a new CUDA process owning none of its parent's allocations (it joins the same
//! model's ledger with a slot of its own).

use crate::config::{self, Config, Mode};
use crate::driver;
use crate::ffi::*;
use crate::records::Records;
use cuvisor_common::ledger::{Attachment, CreateOptions, LedgerFile, Refusal};
use cuvisor_common::size::QuotaSpec;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicPtr, Ordering};
use std::sync::{Once, OnceLock};

const MAX_DEVICES: usize = 64;

pub struct Runtime {
    pub config: Config,
    /// This process's place in the model's ledger, opened on first need.
    account: OnceLock<Result<Attachment<'static>, String>>,
    /// Device pointers the shim charged (plain, pitched, managed, stream-ordered).
    pub ptrs: Records,
    /// VMM physical handles (cuMemCreate).
    pub handles: Records,
    /// CUDA arrays and mipmapped arrays.
    pub arrays: Records,
    /// VMM mappings: start address -> (size, handle).
    pub mappings: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Per device: concurrent managed access? -1 not asked yet.
    managed_access: [AtomicI8; MAX_DEVICES],
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
    /// Over the quota: the call answers out of memory.
    Quota,
    /// The ledger cannot be used: CUDA initialization fails.
    NoLedger,
}

static INIT: Once = Once::new();
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());
static CONFIG_ERRORS: OnceLock<Vec<String>> = OnceLock::new();
static ERRORS_REPORTED: AtomicBool = AtomicBool::new(false);

impl Runtime {
    fn new(config: Config) -> Runtime {
        Runtime {
            config,
            account: OnceLock::new(),
            ptrs: Records::default(),
            handles: Records::default(),
            arrays: Records::default(),
            mappings: Mutex::new(BTreeMap::new()),
            managed_access: [const { AtomicI8::new(-1) }; MAX_DEVICES],
            warned_no_managed: AtomicBool::new(false),
            warned_ipc: AtomicBool::new(false),
        }
    }

    /// This process's attachment to the model's ledger: opened (or created with this
    /// process's quota) the first time it is needed. An unusable ledger is reported once.
    pub fn account(&self) -> Option<&Attachment<'static>> {
        let attached = self.account.get_or_init(|| {
            let c = &self.config;
            let options = CreateOptions {
                group: c.ledger_group,
            };
            let file = LedgerFile::open_or_create(&c.ledger_dir, &c.model, c.quota, options)
                .map_err(|e| e.to_string())?;
            let file: &'static LedgerFile = Box::leak(Box::new(file));
            file.attach().map_err(|e| e.to_string())
        });
        match attached {
            Ok(a) => Some(a),
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

    /// The model's quota in bytes: the ledger's, a percentage fixed against `physical`
    /// (the device's memory) the first time anyone needs it. None: no quota.
    fn quota_bytes(
        &self,
        account: &Attachment<'static>,
        physical: impl FnOnce() -> Option<u64>,
    ) -> Option<u64> {
        let ledger = account.ledger();
        match ledger.quota()? {
            QuotaSpec::Bytes(b) => Some(b),
            QuotaSpec::Percent(_) => ledger
                .quota_bytes()
                .or_else(|| ledger.resolve_percent(physical()?)),
        }
    }

    /// Charges `bytes` to the model, or refuses with the one log line the user sees.
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<(), NotCharged> {
        let account = self.account().ok_or(NotCharged::NoLedger)?;
        // A quota in bytes is known at once; only a percentage waits for the device.
        if account.ledger().quota_bytes().is_none()
            && account.ledger().quota().is_some()
            && self
                .quota_bytes(account, || {
                    driver::current_device().and_then(driver::physical_memory)
                })
                .is_none()
        {
            log::error!(
                "model {}: {what} refused: the quota is a percentage of the device's memory, and the driver \
                 did not say how large the current device is",
                self.config.model
            );
            return Err(NotCharged::Quota);
        }
        account.try_reserve(bytes).map_err(|r: Refusal| {
            log::warn!(
                "model {}: {what} of {} bytes refused: {} of the quota's {} bytes in use",
                self.config.model,
                r.requested,
                r.used,
                r.quota
            );
            NotCharged::Quota
        })
    }

    pub fn release(&self, bytes: u64) {
        if let Some(account) = self.account() {
            account.release(bytes);
        }
    }

    /// Bytes charged to the whole model (every process).
    pub fn model_used(&self) -> u64 {
        self.account().map_or(0, |a| a.ledger().used())
    }

    /// The virtual story: total = min(quota, physical), free = total - what the whole model
    /// holds, saturating. None without a quota (the driver's own numbers stand).
    pub fn virtual_memory(&self, physical_total: u64) -> Option<(u64, u64)> {
        let account = self.account()?;
        let quota = self.quota_bytes(account, || Some(physical_total))?;
        let total = quota.min(physical_total);
        Some((total.saturating_sub(account.ledger().used()), total))
    }

    /// The current device, when plain allocations are to become managed ones on it.
    pub fn redirect_device(&self) -> Option<CUdevice> {
        if self.config.mode != Mode::Managed {
            return None;
        }
        let dev = driver::current_device()?;
        let slot = self.managed_access.get(dev as usize)?;
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
        (access == 1).then_some(dev)
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
        match config::from_lookup(lookup) {
            Ok(config) => {
                crate::logging::init(config.log_level);
                let rt = Box::into_raw(Box::new(Runtime::new(config)));
                RUNTIME.store(rt, Ordering::Release);
            }
            Err(errors) => {
                crate::logging::init(log::LevelFilter::Error);
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
