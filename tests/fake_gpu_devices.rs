//! The fake GPU as a multi-GPU node: device identity (UUIDs, PCI bus ids), CUDA_VISIBLE_DEVICES
//! as NVIDIA's driver reads it, per-device memory, NVML's view of the physical devices and
//! of the processes on them, legacy IPC between processes, and cuStreamGetCtx. Black-box
//! runs of the C probes; exact outputs.

mod common;
use common::*;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The UUIDs of physical devices 0..3: fixed forever (derived from the index alone).
const UUID: [&str; 4] = [
    "GPU-c65f5b9e-b562-403e-a988-10e24995a875",
    "GPU-76be0ae6-17f4-414d-a985-a9927ac7ae82",
    "GPU-6b5ba945-2955-4b72-90ee-40f96ee4d7d2",
    "GPU-67f50473-2cba-453e-9462-ff191355afb6",
];

/// The `devices` line of physical device `phys` at some ordinal.
fn ordinal(k: usize, phys: usize) -> String {
    format!("ordinal {k} {} 0000:{:02X}:00.0", UUID[phys], 0x10 + phys)
}

fn four_gpus(cmd: &mut Command) -> &mut Command {
    cmd.env("FAKE_CUDA_DEVICE_COUNT", "4")
}

/// The devices a process sees with this CUDA_VISIBLE_DEVICES on a 4-GPU node.
fn visible(value: &str) -> Vec<String> {
    run_script(
        four_gpus(&mut driver_probe()).env("CUDA_VISIBLE_DEVICES", value),
        "init-only devices",
    )
}

fn expect_visible(value: &str, physical: &[usize]) {
    let mut want = vec![
        "init-only -> 0".to_owned(),
        format!("devices -> 0 {}", physical.len()),
    ];
    want.extend(physical.iter().enumerate().map(|(k, &p)| ordinal(k, p)));
    assert_eq!(visible(value), want, "CUDA_VISIBLE_DEVICES={value:?}");
}

#[test]
fn four_devices_have_distinct_fixed_uuids_and_pci_bus_ids() {
    let script = "init-only devices device 3 uuid attribute 33 attribute 34 attribute 50 \
                  by-pci 0000:12:00.0 by-pci 00000000:13:00.0 by-pci 11:00.0 by-pci 0:10:0 \
                  by-pci 0000:14:00.0 by-pci 0000:12:00.1 by-pci nonsense";
    // The same through direct binding, dlsym and cuGetProcAddress.
    for probe in [driver_probe, driver_probe_dlsym, driver_probe_procaddr] {
        assert_eq!(
            run_script(four_gpus(&mut probe()), script),
            [
                "init-only -> 0",
                "devices -> 0 4",
                &ordinal(0, 0),
                &ordinal(1, 1),
                &ordinal(2, 2),
                &ordinal(3, 3),
                "device 3 -> 0",
                &format!("uuid -> 0 {}", UUID[3]),
                "attribute 33 -> 0 19", // CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: 0x13
                "attribute 34 -> 0 0",  // PCI_DEVICE_ID: the slot on the bus
                "attribute 50 -> 0 0",  // PCI_DOMAIN_ID
                "by-pci 0000:12:00.0 -> 0 2",
                "by-pci 00000000:13:00.0 -> 0 3",
                "by-pci 11:00.0 -> 0 1",         // bus:device.function
                "by-pci 0:10:0 -> 0 0",          // domain:bus:device
                "by-pci 0000:14:00.0 -> 101 -1", // no device there: CUDA_ERROR_INVALID_DEVICE
                "by-pci 0000:12:00.1 -> 101 -1",
                "by-pci nonsense -> 1 -1", // CUDA_ERROR_INVALID_VALUE
            ]
        );
    }
}

/// All 16 possible devices: distinct UUIDs (RFC 4122 version 4 layout) and bus ids.
#[test]
fn sixteen_devices_are_all_distinct() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_COUNT", "16"),
        "init-only devices",
    );
    assert_eq!(out[1], "devices -> 0 16");
    let (mut uuids, mut buses) = (HashSet::new(), HashSet::new());
    for (k, line) in out[2..].iter().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f.len(), f[1]), (4, k.to_string().as_str()), "{line}");
        let uuid = f[2];
        let groups: Vec<&str> = uuid.trim_start_matches("GPU-").split('-').collect();
        assert!(uuid.starts_with("GPU-"), "{uuid}");
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{uuid}"
        );
        assert!(
            groups
                .concat()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "lowercase hex: {uuid}"
        );
        assert_eq!(&uuid[18..19], "4", "version 4: {uuid}");
        assert!("89ab".contains(&uuid[23..24]), "RFC 4122 variant: {uuid}");
        assert_eq!(f[3], format!("0000:{:02X}:00.0", 0x10 + k));
        uuids.insert(uuid.to_owned());
        buses.insert(f[3].to_owned());
    }
    assert_eq!((uuids.len(), buses.len()), (16, 16));
}

#[test]
fn visible_devices_by_index_select_and_reorder() {
    expect_visible("2", &[2]);
    expect_visible("3,1", &[3, 1]);
    expect_visible("3,2,1,0", &[3, 2, 1, 0]);
    expect_visible("01", &[1]);
    // Ordinals are the listed order everywhere: the context's device, its memory, its UUID.
    let out = run_script(
        four_gpus(&mut driver_probe())
            .env("CUDA_VISIBLE_DEVICES", "3,1")
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB,2GiB,3GiB,4GiB"),
        "device 0 uuid total info alloc 1M device 1 uuid total alloc 1M ptr-device 0 ptr-device 1 \
         device 2 by-pci 0000:13:00.0 by-pci 0000:11:00.0 by-pci 0000:10:00.0",
    );
    assert_eq!(
        out,
        [
            "device 0 -> 0",
            &format!("uuid -> 0 {}", UUID[3]),
            "total -> 0 4294967296",
            "info -> 0 4294967296 4294967296",
            "alloc 1M -> 0 #0",
            "device 1 -> 0",
            &format!("uuid -> 0 {}", UUID[1]),
            "total -> 0 2147483648",
            "alloc 1M -> 0 #1",
            "ptr-device 0 -> 0 0", // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: ordinals, not indices
            "ptr-device 1 -> 0 1",
            "device 2 -> 101", // CUDA_ERROR_INVALID_DEVICE: only two are visible
            "by-pci 0000:13:00.0 -> 0 0",
            "by-pci 0000:11:00.0 -> 0 1",
            "by-pci 0000:10:00.0 -> 101 -1", // hidden
        ]
    );
}

#[test]
fn visible_devices_by_uuid_whole_or_unique_prefix_with_or_without_gpu() {
    expect_visible(UUID[2], &[2]);
    expect_visible(&UUID[1][4..], &[1]); // no "GPU-"
    expect_visible(&format!("{},{}", UUID[3], UUID[0]), &[3, 0]);
    expect_visible("GPU-76be0ae6", &[1]);
    expect_visible("GPU-6b5", &[2]);
    expect_visible("c65f,GPU-67f5", &[0, 3]);
    expect_visible("GPU-C65F5B9E", &[0]); // hex digits in either case
    expect_visible("2,GPU-76be0ae6-17f4-414d", &[2, 1]);
    // "GPU-6" could be device 2 or 3: ambiguous, so the list ends there.
    expect_visible("1,GPU-6,0", &[1]);
}

#[test]
fn visible_devices_stop_at_the_first_invalid_unknown_or_repeated_entry() {
    expect_visible("1,7,2", &[1]); // no device 7
    expect_visible("0,2,-1,1", &[0, 2]); // the example of NVIDIA's documentation
    expect_visible("1,1,2", &[1]); // repeated
    expect_visible(&format!("3,{}", UUID[3]), &[3]); // the same device by UUID
    expect_visible("2,GPU-ffffffff,0", &[2]); // unknown UUID
    expect_visible("2,MIG-x,0", &[2]); // no MIG on the fake
    expect_visible("2,,0", &[2]); // empty entry
    expect_visible("2, 0", &[2]); // no spaces
    expect_visible("1,GPU-", &[1]); // an empty prefix names nothing
    // Nothing visible: CUDA_ERROR_NO_DEVICE, for the driver and the runtime.
    for value in ["", "7", "GPU-ffff", "x,0"] {
        assert_eq!(
            run_script(
                four_gpus(&mut driver_probe()).env("CUDA_VISIBLE_DEVICES", value),
                "init devices"
            ),
            ["init -> 100", "devices -> 3 0"],
            "CUDA_VISIBLE_DEVICES={value:?}"
        );
        assert_eq!(
            run_script(
                four_gpus(&mut runtime_probe()).env("CUDA_VISIBLE_DEVICES", value),
                "count"
            ),
            ["count -> 100 0"], // cudaErrorNoDevice
        );
    }
}

/// The runtime reaches the driver, so it follows CUDA_VISIBLE_DEVICES too.
#[test]
fn the_runtime_follows_visible_devices() {
    let out = run_script(
        four_gpus(&mut runtime_probe())
            .env("CUDA_VISIBLE_DEVICES", "2,0")
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB,2GiB,3GiB,4GiB"),
        "count props info",
    );
    assert_eq!(
        out,
        [
            "count -> 0 2",
            "props -> 0 3221225472",
            "info -> 0 3221225472 3221225472"
        ]
    );
}

/// A process holding memory on a shared fake GPU until told to go on: it runs `before`,
/// then waits for a line on stdin, then runs `after` and exits.
struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Holder {
    fn spawn(cmd: &mut Command, before: &str, expected: &[&str], after: &str) -> Holder {
        let mut child = cmd
            .args(before.split_whitespace())
            .arg("wait")
            .args(after.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        for want in expected {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim_end(), *want);
        }
        Holder { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it go on past `wait`; what it printed from there, after a normal exit.
    fn finish(mut self) -> Vec<String> {
        self.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let rest = (&mut self.out).lines().map(Result::unwrap).collect();
        assert!(self.child.wait().unwrap().success());
        rest
    }
}

#[test]
fn processes_with_different_visible_devices_charge_the_same_physical_device() {
    let dir = TempDir::new("visible-shared");
    let state = dir.path("gpu.state");
    let gpu = |visible: Option<&str>| {
        let mut cmd = driver_probe();
        cmd.env("FAKE_CUDA_STATE", &state)
            .env("FAKE_CUDA_DEVICE_COUNT", "2")
            .env("FAKE_CUDA_DEVICE_MEM", "4GiB,8GiB");
        if let Some(v) = visible {
            cmd.env("CUDA_VISIBLE_DEVICES", v);
        }
        cmd
    };
    // Physical device 1 is ordinal 0 here.
    let holder = Holder::spawn(
        &mut gpu(Some("1")),
        "init total alloc 3GiB",
        &["init -> 0", "total -> 0 8589934592", "alloc 3GiB -> 0 #0"],
        "",
    );
    // ... and ordinal 0 there: the same GPU, 3 GiB of it in use.
    assert_eq!(
        run_script(
            &mut gpu(Some("1,0")),
            "device 0 info uuid device 1 info uuid alloc 1GiB info"
        ),
        [
            "device 0 -> 0",
            "info -> 0 5368709120 8589934592",
            &format!("uuid -> 0 {}", UUID[1]),
            "device 1 -> 0",
            "info -> 0 4294967296 4294967296",
            &format!("uuid -> 0 {}", UUID[0]),
            "alloc 1GiB -> 0 #0",
            "info -> 0 3221225472 4294967296",
        ]
    );
    // Without CUDA_VISIBLE_DEVICES it is ordinal 1; NVML sees the physical devices.
    assert_eq!(
        run_script(&mut gpu(None), "device 1 info nvml-list"),
        [
            "device 1 -> 0",
            "info -> 0 5368709120 8589934592",
            "nvml-list -> 0 2",
            &format!(
                "nvml 0 {} 00000000:10:00.0 0000:10:00.0 4294967296 cc=9.0",
                UUID[0]
            ),
            &format!(
                "nvml 1 {} 00000000:11:00.0 0000:11:00.0 8589934592 cc=9.0",
                UUID[1]
            ),
        ]
    );
    assert_eq!(holder.finish(), ["wait -> 0"]);
    assert_eq!(
        run_script(&mut gpu(Some("1")), "init info"),
        ["init -> 0", "info -> 0 8589934592 8589934592"]
    );
}

#[test]
fn device_memory_can_differ_per_device() {
    let gpu = || {
        let mut cmd = driver_probe();
        cmd.env("FAKE_CUDA_DEVICE_COUNT", "3")
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB,2GiB,512MiB");
        cmd
    };
    assert_eq!(
        run_script(
            &mut gpu(),
            "device 0 total device 1 total alloc 2GiB alloc 1 info device 2 total legacy-total \
             alloc 512M alloc 1 device 0 info"
        ),
        [
            "device 0 -> 0",
            "total -> 0 1073741824",
            "device 1 -> 0",
            "total -> 0 2147483648",
            "alloc 2GiB -> 0 #0",
            "alloc 1 -> 2", // device 1 is full
            "info -> 0 0 2147483648",
            "device 2 -> 0",
            "total -> 0 536870912",
            "legacy-total -> 0 536870912",
            "alloc 512M -> 0 #1",
            "alloc 1 -> 2",
            "device 0 -> 0",
            "info -> 0 1073741824 1073741824", // device 0 untouched
        ]
    );
    let nvml = run_script(&mut gpu(), "nvml-list");
    let totals: Vec<&str> = nvml[1..]
        .iter()
        .map(|l| l.split(' ').nth(5).unwrap())
        .collect();
    assert_eq!(totals, ["1073741824", "2147483648", "536870912"]);
    // One size for every device.
    assert_eq!(
        run_script(
            driver_probe()
                .env("FAKE_CUDA_DEVICE_COUNT", "2")
                .env("FAKE_CUDA_DEVICE_MEM", "3GiB"),
            "device 1 total"
        ),
        ["device 1 -> 0", "total -> 0 3221225472"]
    );
}

#[test]
fn a_size_list_of_the_wrong_length_or_with_a_bad_size_is_refused() {
    for (count, value, why) in [
        (
            "3",
            "1GiB,2GiB",
            "expected one size for every device, or a comma-separated list of one size per \
             device: 3 of them (FAKE_CUDA_DEVICE_COUNT=3)",
        ),
        ("1", "1GiB,1GiB", "one size per device: 1 of them"),
        ("2", "1GiB,", "KiB/MiB/GiB/TiB"),
        ("2", "1GiB,0", "KiB/MiB/GiB/TiB"),
        ("2", "1GiB,2XB", "KiB/MiB/GiB/TiB"),
    ] {
        let out = run(driver_probe()
            .env("FAKE_CUDA_DEVICE_COUNT", count)
            .env("FAKE_CUDA_DEVICE_MEM", value)
            .args(["init", "nvml"]));
        let err = stderr(&out);
        assert_eq!(lines(&out)[0], "init -> 3", "{value}"); // CUDA_ERROR_NOT_INITIALIZED
        assert_eq!(lines(&out)[1], "nvml v1 -> 9 0 0 0", "{value}"); // DRIVER_NOT_LOADED
        assert_eq!(err.matches("fake-cuda:").count(), 1, "one message: {err}");
        assert!(
            err.contains(&format!("FAKE_CUDA_DEVICE_MEM=\"{value}\" is invalid: "))
                && err.contains(why),
            "{value}: {err}"
        );
    }
}

#[test]
fn nvml_ignores_visible_devices_and_finds_devices_by_uuid_and_pci_bus_id() {
    let out = run_script(
        four_gpus(&mut driver_probe()).env("CUDA_VISIBLE_DEVICES", "2"),
        &format!(
            "init devices nvml-list nvml-by-uuid {u2} nvml-by-uuid {bare} nvml-by-uuid GPU-6b5ba945 \
             nvml-by-uuid GPU-00000000-0000-4000-8000-000000000000 \
             nvml-by-bus 00000000:12:00.0 nvml-by-bus 0000:13:00.0 nvml-by-bus 10:00.0 \
             nvml-by-bus 0:11:0 nvml-by-bus 00000000:1f:00.0 nvml-by-bus bogus nvml-version",
            u2 = UUID[2],
            bare = &UUID[2][4..],
        ),
    );
    let mut want = vec![
        "init -> 0".to_owned(),
        "devices -> 0 1".to_owned(),
        ordinal(0, 2),
        "nvml-list -> 0 4".to_owned(),
    ];
    for (k, uuid) in UUID.iter().enumerate() {
        want.push(format!(
            "nvml {k} {uuid} 00000000:{bus:02X}:00.0 0000:{bus:02X}:00.0 17179869184 cc=9.0",
            bus = 0x10 + k
        ));
    }
    want.extend([
        format!("nvml-by-uuid {} -> 0 2", UUID[2]),
        // NVML wants the whole UUID as it prints it: NVML_ERROR_NOT_FOUND (6) otherwise
        format!("nvml-by-uuid {} -> 6 -1", &UUID[2][4..]),
        "nvml-by-uuid GPU-6b5ba945 -> 6 -1".to_owned(),
        "nvml-by-uuid GPU-00000000-0000-4000-8000-000000000000 -> 6 -1".to_owned(),
        "nvml-by-bus 00000000:12:00.0 -> 0 2".to_owned(),
        "nvml-by-bus 0000:13:00.0 -> 0 3".to_owned(),
        "nvml-by-bus 10:00.0 -> 0 0".to_owned(),
        "nvml-by-bus 0:11:0 -> 0 1".to_owned(),
        "nvml-by-bus 00000000:1f:00.0 -> 6 -1".to_owned(), // NVML_ERROR_NOT_FOUND
        "nvml-by-bus bogus -> 2 -1".to_owned(),            // NVML_ERROR_INVALID_ARGUMENT
        "nvml-version -> 0 12090 12090".to_owned(),
    ]);
    assert_eq!(out, want);
}

#[test]
fn nvml_finds_boards_by_serial_and_lists_gpus_by_topology() {
    let out = run_script(
        four_gpus(&mut driver_probe()),
        "nvml-serial 0 nvml-serial 3 nvml-by-serial 1650924000102 nvml-by-serial 1650924000199 \
         nvml-nearest 1 50 nvml-nearest 1 40 nvml-nearest 1 0 nvml-nearest 1 45 \
         nvml-gpuset 0 nvml-gpuset 100000",
    );
    assert_eq!(
        out,
        [
            "nvml-serial 0 -> 0 1650924000100".to_owned(),
            "nvml-serial 3 -> 0 1650924000103".to_owned(),
            format!("nvml-by-serial 1650924000102 -> 0 {}", UUID[2]),
            "nvml-by-serial 1650924000199 -> 6 -".to_owned(), // NVML_ERROR_NOT_FOUND
            // The fake GPUs meet at NVML_TOPOLOGY_SYSTEM (50) only.
            format!(
                "nvml-nearest 1 50 -> 0 3 {} {} {}",
                UUID[0], UUID[2], UUID[3]
            ),
            "nvml-nearest 1 40 -> 0 0".to_owned(),
            "nvml-nearest 1 0 -> 0 0".to_owned(),
            "nvml-nearest 1 45 -> 2 0".to_owned(), // not a level: NVML_ERROR_INVALID_ARGUMENT
            format!(
                "nvml-gpuset 0 -> 0 4 {} {} {} {}",
                UUID[0], UUID[1], UUID[2], UUID[3]
            ),
            "nvml-gpuset 100000 -> 2 0".to_owned(), // no such CPU
        ]
    );
}

#[test]
fn nvml_lists_the_processes_on_each_device_and_their_memory() {
    let dir = TempDir::new("nvml-procs");
    let state = dir.path("gpu.state");
    let gpu = || {
        let mut cmd = driver_probe();
        cmd.env("FAKE_CUDA_STATE", &state)
            .env("FAKE_CUDA_DEVICE_COUNT", "2")
            .env("FAKE_CUDA_DEVICE_MEM", "8GiB");
        cmd
    };
    let nobody = [
        "nvml-procs 0 -> 0 0 sizing=0",
        "nvml-procs 1 -> 0 0 sizing=0",
    ];
    // Nobody yet: the size query (a count of 0) answers success.
    assert_eq!(run_script(&mut gpu(), "nvml-procs 0 nvml-procs 1"), nobody);
    let holder = Holder::spawn(
        gpu().env("CUDA_VISIBLE_DEVICES", "1"),
        "init alloc 1GiB managed 2GiB prefetch 1 gpu",
        &[
            "init -> 0",
            "alloc 1GiB -> 0 #0",
            "managed 2GiB -> 0 #1",
            "prefetch 1 gpu -> 0",
        ],
        "",
    );
    // A context and no memory: listed, with 0 bytes.
    let idle = Holder::spawn(
        gpu().env("CUDA_VISIBLE_DEVICES", "0"),
        "init",
        &["init -> 0"],
        "",
    );
    let out = run_script(&mut gpu(), "device 1 alloc 512M nvml-procs 0 nvml-procs 1");
    let own = out.last().unwrap();
    assert!(
        own.starts_with("pid ") && own.ends_with(" 536870912 self"),
        "{out:?}"
    );
    assert_eq!(
        out,
        [
            "device 1 -> 0".to_owned(),
            "alloc 512M -> 0 #0".to_owned(),
            // NVML_ERROR_INSUFFICIENT_SIZE (7) with the count, then the list
            "nvml-procs 0 -> 0 1 sizing=7".to_owned(),
            format!("pid {} 0", idle.pid()),
            "nvml-procs 1 -> 0 2 sizing=7".to_owned(),
            format!("pid {} 3221225472", holder.pid()), // plain + prefetched managed
            own.clone(),
        ]
    );
    // The observer's memory went back at its exit; an NVML-only process uses no device.
    assert_eq!(
        run_script(&mut gpu(), "nvml-procs 1"),
        [
            "nvml-procs 1 -> 0 1 sizing=7".to_owned(),
            format!("pid {} 3221225472", holder.pid()),
        ]
    );
    assert_eq!(holder.finish(), ["wait -> 0"]);
    assert_eq!(idle.finish(), ["wait -> 0"]);
    assert_eq!(run_script(&mut gpu(), "nvml-procs 0 nvml-procs 1"), nobody);
}

#[test]
fn ipc_handles_open_in_another_process_on_the_same_gpu() {
    let dir = TempDir::new("ipc");
    let state = dir.path("gpu.state");
    let big = dir.path("big.handle").display().to_string();
    let small = dir.path("small.handle").display().to_string();
    let gpu = || {
        let mut cmd = driver_probe();
        cmd.env("FAKE_CUDA_STATE", &state)
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB");
        cmd
    };
    // The exporter: a large allocation written before the export, a small one after it.
    let exporter = Holder::spawn(
        &mut gpu(),
        &format!(
            "init alloc 64M alloc 4K memset 0 ipc-export 0 {big} ipc-export 1 {small} \
             memset 1 ipc-open {big} info"
        ),
        &[
            "init -> 0",
            "alloc 64M -> 0 #0",
            "alloc 4K -> 0 #1",
            "memset 0 -> 0 ok",
            &format!("ipc-export 0 {big} -> 0"),
            &format!("ipc-export 1 {small} -> 0"),
            "memset 1 -> 0 ok",
            // in the process that exported it: CUDA_ERROR_INVALID_CONTEXT
            &format!("ipc-open {big} -> 201"),
            "info -> 0 1006628864 1073741824", // 1 GiB - 64 MiB - 4 KiB
        ],
        "peek 0 peek 1",
    );
    // The importer sees the exporter's data and writes to it; the mappings cost nothing.
    assert_eq!(
        run_script(
            &mut gpu(),
            &format!(
                "init ipc-open {big} ipc-open {small} ipc-open {big} peek 0 peek 1 info \
                 roundtrip 0 memset 1 free 0 ipc-close 0 ipc-close 2 ipc-close 0 ipc-close 1"
            ),
        ),
        [
            "init -> 0".to_owned(),
            format!("ipc-open {big} -> 0 #0"),
            format!("ipc-open {small} -> 0 #1"),
            format!("ipc-open {big} -> 0 #2"), // the same address again, one more reference
            "peek 0 -> 0 abcdef01".to_owned(),
            "peek 1 -> 0 abcdef01".to_owned(),
            "info -> 0 1006628864 1073741824".to_owned(),
            "roundtrip 0 -> 0 ok".to_owned(), // writes 0, 2654435761, ... over the pattern
            "memset 1 -> 0 ok".to_owned(),
            "free 0 -> 1".to_owned(), // an IPC mapping goes with cuIpcCloseMemHandle
            "ipc-close 0 -> 0".to_owned(),
            "ipc-close 2 -> 0".to_owned(),
            "ipc-close 0 -> 1".to_owned(), // both references are gone: CUDA_ERROR_INVALID_VALUE
            "ipc-close 1 -> 0".to_owned(),
        ]
    );
    // The exporter reads what the importer wrote.
    assert_eq!(
        exporter.finish(),
        ["wait -> 0", "peek 0 -> 0 00000000", "peek 1 -> 0 abcdef01"]
    );
    // Its process is gone, and with it what the handle named: CUDA_ERROR_INVALID_HANDLE.
    assert_eq!(
        run_script(&mut gpu(), &format!("init ipc-open {small}")),
        ["init -> 0".to_owned(), format!("ipc-open {small} -> 400")]
    );
    // Garbage is no handle either.
    let zero = dir.path("zero.handle");
    std::fs::write(&zero, [0u8; 64]).unwrap();
    let zero = zero.display().to_string();
    assert_eq!(
        run_script(&mut gpu(), &format!("init ipc-open {zero}")),
        ["init -> 0".to_owned(), format!("ipc-open {zero} -> 400")]
    );
    let exporter = Holder::spawn(
        &mut gpu(),
        &format!("init alloc 1M ipc-export 0 {big} free 0"),
        &[
            "init -> 0",
            "alloc 1M -> 0 #0",
            &format!("ipc-export 0 {big} -> 0"),
            "free 0 -> 0",
        ],
        &format!("alloc 1M ipc-export 1 {big}"),
    );
    // The allocation was freed: the handle names nothing.
    assert_eq!(
        run_script(&mut gpu(), &format!("init ipc-open {big}")),
        ["init -> 0".to_owned(), format!("ipc-open {big} -> 400")]
    );
    assert_eq!(
        exporter.finish(),
        [
            "wait -> 0".to_owned(),
            "alloc 1M -> 0 #1".to_owned(),
            format!("ipc-export 1 {big} -> 0"),
        ]
    );
    let exporter = Holder::spawn(
        &mut gpu(),
        &format!("init alloc 1M ipc-export 0 {big}"),
        &[
            "init -> 0",
            "alloc 1M -> 0 #0",
            &format!("ipc-export 0 {big} -> 0"),
        ],
        "",
    );
    // A handle is good only on the fake GPU it came from (this process has a private one) ...
    assert_eq!(
        run_script(&mut driver_probe(), &format!("init ipc-open {big}")),
        ["init -> 0".to_owned(), format!("ipc-open {big} -> 400")]
    );
    // ... and needs a current context: CUDA_ERROR_INVALID_CONTEXT.
    assert_eq!(
        run_script(&mut gpu(), &format!("init-only ipc-open {big}")),
        [
            "init-only -> 0".to_owned(),
            format!("ipc-open {big} -> 201")
        ]
    );
    assert_eq!(exporter.finish(), ["wait -> 0"]);
}

#[test]
fn stream_context_and_the_new_entry_points_by_version() {
    assert_eq!(
        run_script(
            four_gpus(&mut driver_probe()),
            "device 2 stream-ctx \
             procaddr cuStreamGetCtx 9020 0 procaddr cuStreamGetCtx 12000 2 \
             procaddr cuStreamGetCtx 12050 0 procaddr cuStreamGetCtx 12050 2 \
             procaddr cuIpcOpenMemHandle 10020 0 procaddr cuIpcOpenMemHandle 11000 0 \
             procaddr cuIpcCloseMemHandle 4010 0 procaddr cuDeviceGetPCIBusId 4010 0 \
             procaddr cuDeviceGetByPCIBusId 4000 0"
        ),
        [
            "device 2 -> 0",
            "stream-ctx -> 0 stream=current legacy=current v2=current green=null",
            "procaddr cuStreamGetCtx 9020 0 -> 0 status=0 cuStreamGetCtx@libcuda.so.1",
            "procaddr cuStreamGetCtx 12000 2 -> 0 status=0 cuStreamGetCtx_ptsz@libcuda.so.1",
            "procaddr cuStreamGetCtx 12050 0 -> 0 status=0 cuStreamGetCtx_v2@libcuda.so.1",
            "procaddr cuStreamGetCtx 12050 2 -> 0 status=0 cuStreamGetCtx_v2_ptsz@libcuda.so.1",
            "procaddr cuIpcOpenMemHandle 10020 0 -> 0 status=0 cuIpcOpenMemHandle@libcuda.so.1",
            "procaddr cuIpcOpenMemHandle 11000 0 -> 0 status=0 cuIpcOpenMemHandle_v2@libcuda.so.1",
            "procaddr cuIpcCloseMemHandle 4010 0 -> 0 status=0 cuIpcCloseMemHandle@libcuda.so.1",
            "procaddr cuDeviceGetPCIBusId 4010 0 -> 0 status=0 cuDeviceGetPCIBusId@libcuda.so.1",
            "procaddr cuDeviceGetByPCIBusId 4000 0 -> 0 status=2 NULL",
        ]
    );
    // Without a current context the legacy stream has none: CUDA_ERROR_INVALID_CONTEXT.
    assert_eq!(
        run_script(&mut driver_probe(), "init-only stream-ctx"),
        ["init-only -> 0", "stream-ctx -> 201"]
    );
}
