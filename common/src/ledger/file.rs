//! An open ledger file: creating it, opening and validating it, mapping it, its header
//! and its GPU table (registration).

use super::dir::{check_owner, open_dir, valid_model_name};
use super::error::{LedgerError, io_err};
use super::layout::{
    GPU_SIZE, Gpu, GpuIndex, HEADER_SIZE, Header, MAGIC, MAX_GPUS, QUOTA_BYTES, QUOTA_NONE,
    QUOTA_PERCENT, READY, SLOT_SIZE, SLOTS, SLOTS_START, Slot, VERSION, file_size, gpu_offset,
    slot_offset,
};
use super::liveness::RegistrationLock;
use super::snapshot::validate_header;
use crate::gpu::GpuUuid;
use crate::size::QuotaSpec;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How a ledger file is created.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Share the ledger with this group (mode 0660 instead of 0600), for workers that run
    /// as another user in the same group.
    pub group: Option<u32>,
}

/// An open ledger file, mapped into this process.
pub struct LedgerFile {
    pub(super) path: PathBuf,
    pub(super) model: String,
    /// The open file description that carries this process's liveness locks.
    pub(super) file: File,
    map: *mut u8,
    len: usize,
    /// Slots attached through this handle (our own locks do not show in lock tests).
    pub(super) own: Mutex<Vec<u32>>,
    /// Serializes this process's threads in GPU registration (the file lock does not:
    /// they share its open file description).
    registering: Mutex<()>,
    /// When this process last scanned for dead processes because a reservation failed.
    pub(super) last_reclaim_ns: AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for LedgerFile {}
// SAFETY: the other fields are Sync; threads change the shared mapping only through atomics
// (its plain header fields are written once, in `create`, before the handle is returned).
unsafe impl Sync for LedgerFile {}

impl Drop for LedgerFile {
    fn drop(&mut self) {
        // SAFETY: unmapping what we mapped; the file closes after.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

impl LedgerFile {
    /// The ledger file of `model` in `dir`.
    pub fn path_for(dir: &Path, model: &str) -> PathBuf {
        dir.join(format!("{model}.ledger"))
    }

    /// Creates the ledger of `model` with `quota`; fails if it exists.
    pub fn create(
        dir: &Path,
        model: &str,
        quota: Option<QuotaSpec>,
        options: CreateOptions,
    ) -> Result<LedgerFile, LedgerError> {
        if !valid_model_name(model) {
            return Err(LedgerError::BadModelName {
                model: model.to_owned(),
            });
        }
        let path = Self::path_for(dir, model);
        // With a group, workers of another user must reach their file: the directory is
        // traversable (not listable, not writable) by everyone.
        let mode = if options.group.is_some() {
            0o711
        } else {
            0o700
        };
        let dir_fd = open_dir(dir, Some(mode))?;
        // Build the whole file under a temporary name, then publish it with link(): a
        // reader never sees a half-written header, and of two creators exactly one wins.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp_name = format!(".{model}.ledger.{}.{nanos}", std::process::id());
        let temp = dir.join(&temp_name);
        let c_temp = CString::new(temp_name).expect("no NUL in a model name");
        let c_name = CString::new(format!("{model}.ledger")).expect("no NUL in a model name");
        // SAFETY: openat relative to the verified directory, never following a link.
        let fd = unsafe {
            libc::openat(
                dir_fd.as_raw_fd(),
                c_temp.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io_err(&temp, "create")(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor we just opened and own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let result = (|| {
            let file_mode = if let Some(gid) = options.group {
                // SAFETY: fchown on our own fd.
                if unsafe { libc::fchown(file.as_raw_fd(), u32::MAX, gid) } != 0 {
                    return Err(io_err(&temp, "give the ledger to its group")(
                        io::Error::last_os_error(),
                    ));
                }
                0o660
            } else {
                0o600
            };
            // Explicit, whatever the umask.
            // SAFETY: fchmod on our own fd.
            unsafe { libc::fchmod(file.as_raw_fd(), file_mode) };
            file.set_len(file_size(SLOTS) as u64)
                .map_err(io_err(&temp, "size"))?;
            let ledger = Self::map(path.clone(), model.to_owned(), file, file_size(SLOTS))?;
            ledger.init_header(model, quota);
            // SAFETY: two valid C strings, both relative to the verified directory.
            if unsafe {
                libc::linkat(
                    dir_fd.as_raw_fd(),
                    c_temp.as_ptr(),
                    dir_fd.as_raw_fd(),
                    c_name.as_ptr(),
                    0,
                )
            } != 0
            {
                let e = io::Error::last_os_error();
                return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                    LedgerError::Exists { path: path.clone() }
                } else {
                    io_err(&path, "create")(e)
                });
            }
            Ok(ledger)
        })();
        // SAFETY: unlinkat of the temporary name in the verified directory.
        unsafe { libc::unlinkat(dir_fd.as_raw_fd(), c_temp.as_ptr(), 0) };
        result
    }

    /// Opens the existing ledger of `model`, validating everything about it.
    pub fn open(dir: &Path, model: &str) -> Result<LedgerFile, LedgerError> {
        let (path, file, size) = Self::open_validated(dir, model)?;
        Self::map(path, model.to_owned(), file, size as usize)
    }

    /// Opens the ledger of `model` and validates its header from a copy: the path, the
    /// open file and its size.
    pub(super) fn open_validated(
        dir: &Path,
        model: &str,
    ) -> Result<(PathBuf, File, u64), LedgerError> {
        if !valid_model_name(model) {
            return Err(LedgerError::BadModelName {
                model: model.to_owned(),
            });
        }
        let path = Self::path_for(dir, model);
        let dir_fd = open_dir(dir, None)?;
        let c_name = CString::new(format!("{model}.ledger")).expect("no NUL in a model name");
        // SAFETY: openat relative to the verified directory, never following a link.
        let fd = unsafe {
            libc::openat(
                dir_fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        let opened = if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a descriptor we just opened and own.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(LedgerError::NotARegularFile {
                    path,
                    what: "a symbolic link",
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(LedgerError::NotARegularFile {
                    path,
                    what: "a directory",
                });
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let meta = file.metadata().map_err(io_err(&path, "inspect"))?;
        if !meta.file_type().is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            };
            return Err(LedgerError::NotARegularFile { path, what });
        }
        check_owner(&path, meta.uid(), meta.mode(), false)?;
        let damaged = |what: String| LedgerError::Damaged {
            path: path.clone(),
            what,
        };
        let size = meta.size();
        if size < HEADER_SIZE as u64 {
            return Err(damaged(format!("{size} bytes, shorter than its header")));
        }
        // Check the header from a copy before mapping anything.
        let mut raw = [0u8; HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, 0)
            .map_err(io_err(&path, "read"))?;
        validate_header(&raw, size, model).map_err(damaged)?;
        Ok((path, file, size))
    }

    /// Opens the ledger of `model`, creating it with `quota` if there is none. A ledger
    /// that exists keeps its quota: asking for a different one is an error; asking for
    /// none joins it.
    pub fn open_or_create(
        dir: &Path,
        model: &str,
        quota: Option<QuotaSpec>,
        options: CreateOptions,
    ) -> Result<LedgerFile, LedgerError> {
        let ledger = match Self::open(dir, model) {
            Ok(l) => l,
            Err(LedgerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                match Self::create(dir, model, quota, options) {
                    Err(LedgerError::Exists { .. }) => Self::open(dir, model)?, // another process won
                    other => return other,
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(requested) = quota
            && ledger.quota() != Some(requested)
        {
            return Err(LedgerError::QuotaMismatch {
                path: ledger.path.clone(),
                model: model.to_owned(),
                ledger: ledger.quota(),
                requested,
            });
        }
        Ok(ledger)
    }

    fn map(
        path: PathBuf,
        model: String,
        file: File,
        len: usize,
    ) -> Result<LedgerFile, LedgerError> {
        // SAFETY: mapping `len` bytes of a file we checked is that long.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io_err(&path, "map")(io::Error::last_os_error()));
        }
        Ok(LedgerFile {
            path,
            model,
            file,
            map: map.cast(),
            len,
            own: Mutex::new(Vec::new()),
            registering: Mutex::new(()),
            last_reclaim_ns: AtomicU64::new(0),
        })
    }

    fn init_header(&self, model: &str, quota: Option<QuotaSpec>) {
        // SAFETY: a fresh, private (not yet linked) mapping of at least the header size.
        let h = unsafe { &mut *(self.map as *mut Header) };
        h.magic = MAGIC;
        h.version = VERSION;
        h.header_size = HEADER_SIZE as u32;
        h.slot_size = SLOT_SIZE as u32;
        h.slot_count = SLOTS;
        h.file_size = file_size(SLOTS) as u64;
        let (kind, percent, bytes) = match quota {
            None => (QUOTA_NONE, 0, u64::MAX),
            Some(QuotaSpec::Bytes(b)) => (QUOTA_BYTES, 0, b),
            Some(QuotaSpec::Percent(p)) => (QUOTA_PERCENT, p as u32, 0),
        };
        h.quota_kind = AtomicU32::new(kind);
        h.quota_percent = AtomicU32::new(percent);
        h.quota_bytes = AtomicU64::new(bytes);
        h.gpu_count = MAX_GPUS as u32;
        h.gpu_size = GPU_SIZE as u32;
        h.created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        h.model = [0; 64];
        h.model[..model.len()].copy_from_slice(model.as_bytes());
    }

    pub(super) fn header(&self) -> &Header {
        // SAFETY: validated size; the fields read as plain values were checked at open and
        // are never written after publication.
        unsafe { &*(self.map as *const Header) }
    }

    pub(super) fn slot_count(&self) -> u32 {
        ((self.len - SLOTS_START) / SLOT_SIZE) as u32
    }

    pub(super) fn slot(&self, index: u32) -> &Slot {
        assert!(index < self.slot_count());
        // SAFETY: within the mapping (checked above); slots are only accessed atomically.
        unsafe { &*(self.map.add(slot_offset(index) as usize) as *const Slot) }
    }

    pub(super) fn gpu(&self, index: GpuIndex) -> &Gpu {
        // SAFETY: a GpuIndex is below MAX_GPUS, and the table lies within every validated
        // file; its fields are only accessed atomically.
        unsafe { &*(self.map.add(gpu_offset(index.get())) as *const Gpu) }
    }

    /// The GPU entries in use, in table order.
    pub(super) fn ready_gpus(&self) -> impl Iterator<Item = GpuIndex> + '_ {
        (0..MAX_GPUS as u8)
            .map(GpuIndex)
            .take_while(|&g| self.gpu(g).state.load(Ordering::Acquire) == READY)
    }

    /// The whole file, read word by word with atomic loads (the mapping is shared with
    /// other processes and threads that write it).
    pub(super) fn copy(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for at in (0..self.len).step_by(8) {
            // SAFETY: within the mapping, 8-byte aligned (a page-aligned map; every
            // structure is a multiple of 8 bytes).
            let word = unsafe { &*(self.map.add(at) as *const AtomicU64) };
            out.extend_from_slice(&word.load(Ordering::Acquire).to_ne_bytes());
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the processes of group `gid` use the ledger of `model` (mode 0660, the file's
    /// group `gid`), as [`CreateOptions::group`] does at creation: for a ledger made
    /// before its model ran as another user. The file is checked, never mapped.
    pub fn share_with_group(dir: &Path, model: &str, gid: u32) -> Result<(), LedgerError> {
        let (path, file, _) = Self::open_validated(dir, model)?;
        let fd = file.as_raw_fd();
        // SAFETY: fchown and fchmod on our own descriptor.
        if unsafe { libc::fchown(fd, u32::MAX, gid) } != 0
            // SAFETY: fchmod on the same descriptor, which we own.
            || unsafe { libc::fchmod(fd, 0o660) } != 0
        {
            return Err(io_err(&path, "give the ledger to its group")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The quota on each GPU.
    pub fn quota(&self) -> Option<QuotaSpec> {
        let h = self.header();
        loop {
            let before = h.quota_seq.load(Ordering::Acquire);
            let fields = (
                h.quota_kind.load(Ordering::Acquire),
                h.quota_percent.load(Ordering::Acquire),
                h.quota_bytes.load(Ordering::Acquire),
            );
            if before % 2 == 1 || h.quota_seq.load(Ordering::Acquire) != before {
                std::hint::spin_loop();
                continue; // being changed: read again
            }
            return match fields {
                (QUOTA_BYTES, _, bytes) => Some(QuotaSpec::Bytes(bytes)),
                (QUOTA_PERCENT, percent, _) => Some(QuotaSpec::Percent(percent as u8)),
                _ => None,
            };
        }
    }

    /// Changes the model's quota, live: in the header, and on every GPU the model has met
    /// (a percentage resolved against each GPU's memory). A reservation is checked against
    /// its GPU's quota when it is made, so a raise counts from the next one, and after a
    /// cut below what is in use every reservation is refused until usage falls under it.
    /// Under the GPU table's lock, so a GPU registered meanwhile gets the new quota.
    /// Returns the quota it replaced.
    pub fn set_quota(&self, quota: Option<QuotaSpec>) -> Result<Option<QuotaSpec>, LedgerError> {
        let _threads = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let _processes =
            RegistrationLock::take(&self.file).map_err(io_err(&self.path, "lock the GPU table"))?;
        let before = self.quota();
        let h = self.header();
        let (kind, percent, bytes) = match quota {
            None => (QUOTA_NONE, 0, u64::MAX),
            Some(QuotaSpec::Bytes(b)) => (QUOTA_BYTES, 0, b),
            Some(QuotaSpec::Percent(p)) => (QUOTA_PERCENT, p as u32, 0),
        };
        // One writer at a time (the lock): odd while writing.
        h.quota_seq.fetch_add(1, Ordering::AcqRel);
        h.quota_kind.store(kind, Ordering::Release);
        h.quota_percent.store(percent, Ordering::Release);
        h.quota_bytes.store(bytes, Ordering::Release);
        h.quota_seq.fetch_add(1, Ordering::AcqRel);
        for g in self.ready_gpus() {
            let gpu = self.gpu(g);
            let resolved = match quota {
                None => u64::MAX,
                Some(spec) => spec.bytes(gpu.physical.load(Ordering::Relaxed)).max(1),
            };
            gpu.quota_bytes.store(resolved, Ordering::Release);
        }
        Ok(before)
    }

    /// The entry of the GPU `uuid`, registered if this is the first time the model meets
    /// it, with its quota in bytes resolved against `physical` (the GPU's memory). See the
    /// protocol in the module's documentation.
    pub fn register_gpu(&self, uuid: GpuUuid, physical: u64) -> Result<GpuIndex, LedgerError> {
        self.register_gpu_with_quota(uuid, physical, None)
    }

    /// [`LedgerFile::register_gpu`], the GPU's quota given by its registrant (`quota`:
    /// HAMi's limit of that device, which may differ between devices) instead of the
    /// file's. The first registrant of a GPU fixes it, as for a percentage.
    pub fn register_gpu_with_quota(
        &self,
        uuid: GpuUuid,
        physical: u64,
        quota: Option<u64>,
    ) -> Result<GpuIndex, LedgerError> {
        if let Some(found) = self.find_gpu(uuid) {
            return Ok(found);
        }
        let _threads = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let _processes =
            RegistrationLock::take(&self.file).map_err(io_err(&self.path, "lock the GPU table"))?;
        if let Some(found) = self.find_gpu(uuid) {
            return Ok(found);
        }
        let index = (0..MAX_GPUS as u8)
            .map(GpuIndex)
            .find(|&g| self.gpu(g).state.load(Ordering::Acquire) != READY)
            .ok_or_else(|| LedgerError::TooManyGpus {
                path: self.path.clone(),
                uuid,
            })?;
        let g = self.gpu(index);
        let quota = match (quota, self.quota()) {
            (Some(q), _) => q.max(1),
            (None, None) => u64::MAX,
            (None, Some(spec)) => spec.bytes(physical).max(1),
        };
        for (word, bytes) in g.uuid.iter().zip(uuid.0.chunks(8)) {
            word.store(
                u64::from_ne_bytes(bytes.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        g.quota_bytes.store(quota, Ordering::Relaxed);
        g.physical.store(physical, Ordering::Relaxed);
        g.used.store(0, Ordering::Relaxed);
        g.peak.store(0, Ordering::Relaxed);
        g.refused.store(0, Ordering::Relaxed);
        g.state.store(READY, Ordering::Release);
        Ok(index)
    }

    /// The entry of the GPU `uuid`, if the model has met it.
    pub fn find_gpu(&self, uuid: GpuUuid) -> Option<GpuIndex> {
        self.ready_gpus().find(|&g| self.gpu_uuid(g) == uuid)
    }

    /// The UUID of a registered GPU entry.
    pub fn gpu_uuid(&self, index: GpuIndex) -> GpuUuid {
        let g = self.gpu(index);
        let mut out = [0u8; 16];
        for (bytes, word) in out.chunks_mut(8).zip(&g.uuid) {
            bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        GpuUuid(out)
    }

    /// The quota on a registered GPU in bytes; None without a quota.
    pub fn gpu_quota(&self, index: GpuIndex) -> Option<u64> {
        match self.gpu(index).quota_bytes.load(Ordering::Acquire) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    /// Bytes charged to the model on a registered GPU now.
    pub fn gpu_used(&self, index: GpuIndex) -> u64 {
        self.gpu(index).used.load(Ordering::Acquire)
    }

    /// Bytes charged to the model now, on all its GPUs together.
    pub fn used(&self) -> u64 {
        self.ready_gpus().map(|g| self.gpu_used(g)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testing::{fresh, temp_dir, uuid};

    /// Processes registering the same GPUs at once (here: threads with open file
    /// descriptions of their own, which the registration lock excludes as it does
    /// processes) agree on one entry per GPU.
    #[test]
    fn concurrent_registrations_give_one_entry_per_gpu() {
        for round in 0..40 {
            let (dir, l) = fresh(&format!("race-{round}"), QuotaSpec::Bytes(100));
            let seen: Vec<Vec<GpuIndex>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..6)
                    .map(|t| {
                        let dir = &dir;
                        scope.spawn(move || {
                            let mine = LedgerFile::open(dir, "m").unwrap();
                            (0..4u8)
                                .map(|n| mine.register_gpu(uuid((n + t) % 4), 1000).unwrap())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let snap = l.snapshot().unwrap();
            assert_eq!(snap.gpus.len(), 4, "round {round}: {snap:?}");
            for (t, indices) in seen.iter().enumerate() {
                for (n, index) in indices.iter().enumerate() {
                    let u = uuid((n as u8 + t as u8) % 4);
                    assert_eq!(l.find_gpu(u), Some(*index), "round {round}");
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_sixteenth_gpu_fits_and_a_seventeenth_is_refused() {
        let (dir, l) = fresh("many", QuotaSpec::Bytes(100));
        for n in 0..MAX_GPUS as u8 {
            assert_eq!(l.register_gpu(uuid(n), 1000).unwrap().get(), n as usize);
        }
        let err = l.register_gpu(uuid(200), 1000).unwrap_err();
        assert!(matches!(err, LedgerError::TooManyGpus { .. }), "{err}");
        assert!(err.to_string().contains(&uuid(200).to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_percentage_is_resolved_against_each_gpu() {
        let (dir, l) = fresh("percent", QuotaSpec::Percent(25));
        let small = l.register_gpu(uuid(1), 400).unwrap();
        let big = l.register_gpu(uuid(2), 800).unwrap();
        assert_eq!(
            (l.gpu_quota(small), l.gpu_quota(big)),
            (Some(100), Some(200))
        );
        let again = LedgerFile::open(&dir, "m").unwrap();
        assert_eq!(
            again.register_gpu(uuid(1), 4000).unwrap(),
            small,
            "the first resolution stands"
        );
        assert_eq!(again.gpu_quota(small), Some(100));
        let a = l.attach().unwrap();
        assert_eq!(a.try_reserve(big, 200), Ok(()));
        assert!(a.try_reserve(small, 101).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_quota_in_the_file_is_authoritative() {
        let dir = temp_dir("quota");
        LedgerFile::create(
            &dir,
            "m",
            Some(QuotaSpec::Bytes(1 << 30)),
            CreateOptions::default(),
        )
        .unwrap();
        assert!(LedgerFile::open_or_create(&dir, "m", None, CreateOptions::default()).is_ok());
        assert!(
            LedgerFile::open_or_create(
                &dir,
                "m",
                Some(QuotaSpec::Bytes(1 << 30)),
                CreateOptions::default()
            )
            .is_ok()
        );
        let err = LedgerFile::open_or_create(
            &dir,
            "m",
            Some(QuotaSpec::Bytes(2 << 30)),
            CreateOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, LedgerError::QuotaMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("2147483648 bytes")
                && err.to_string().contains("1073741824 bytes"),
            "{err}"
        );
        assert!(matches!(
            LedgerFile::create(&dir, "m", None, CreateOptions::default()),
            Err(LedgerError::Exists { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
