//! Builds the fake GPU (cuda_stubs/, C) into shared objects with the real sonames, plus
//! the C probe programs the tests drive, all under $OUT_DIR/fake_gpu. Tests and examples
//! find them through the compile-time variable CUDA_STUB_DIR.
//!
//! The objects are linked by hand because the cc crate only produces static archives;
//! `cargo_metadata(false)` keeps them out of our own crates' link lines.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const STUBS: &str = "cuda_stubs";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fake_gpu");
    std::fs::create_dir_all(&out).expect("create $OUT_DIR/fake_gpu");
    println!("cargo:rustc-env=CUDA_STUB_DIR={}", out.display());
    println!("cargo:rerun-if-env-changed=CUVISOR_FAKE_GPU");
    // The wheel's build (packaging/backend.py) ships no test: no fake GPU to build, and
    // its C (for this host's glibc) need not build for the wheel's older one.
    if env::var_os("CUVISOR_FAKE_GPU").is_some_and(|v| v == "off") {
        return;
    }

    // The device model, shared by libcuda and NVML so that both see one GPU.
    shared_object(
        &out,
        "libfakegpu_core.so",
        &["fakegpu_config.c", "fakegpu_state.c"],
        &["-lpthread"],
    );
    let with_core = ["-L", path_str(&out), "-lfakegpu_core", "-Wl,-rpath,$ORIGIN"];
    shared_object(
        &out,
        "libcuda.so.1",
        &[
            "libcuda_core.c",
            "libcuda_memory.c",
            "libcuda_modules.c",
            "libcuda_procaddr.c",
            "libcuda_darkapi.c",
            "hmac_md2.c",
        ],
        &with_core,
    );
    shared_object(&out, "libnvidia-ml.so.1", &["libnvml.c"], &with_core);
    shared_object(
        &out,
        "libcudart.so.12",
        &["libcudart.c"],
        &[&with_core[..], &["-ldl"]].concat(),
    );
    for (link, target) in [
        ("libcuda.so", "libcuda.so.1"),
        ("libnvidia-ml.so", "libnvidia-ml.so.1"),
        ("libcudart.so", "libcudart.so.12"),
    ] {
        let link = out.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("symlink a development name");
    }

    // Black-box clients: the driver API by direct binding, by dlopen+dlsym and through
    // cuGetProcAddress alone; the runtime API; and a second preload library that wraps
    // cudaMalloc. No rpath: the tests choose the libraries with LD_LIBRARY_PATH.
    let probe = "probes/driver_probe.c";
    let direct = ["-L", path_str(&out), "-lcuda", "-ldl", "-lpthread"];
    executable(&out, "driver_probe", probe, &direct);
    executable(
        &out,
        "driver_probe_dlsym",
        probe,
        &["-DBIND_DLSYM", "-ldl", "-lpthread"],
    );
    executable(
        &out,
        "driver_probe_procaddr",
        probe,
        &["-DBIND_PROCADDR", "-ldl", "-lpthread"],
    );
    let runtime = ["-L", path_str(&out), "-lcudart", "-ldl"];
    executable(&out, "runtime_probe", "probes/runtime_probe.c", &runtime);
    // NVIDIA's runtime from its wheels (tests/nvidia_runtime.rs): opened by path at run time.
    executable(&out, "nvrt_probe", "probes/nvrt_probe.c", &["-ldl"]);
    executable(&out, "bench", "probes/bench.c", &direct);
    executable(&out, "stamp", "probes/stamp.c", &[]);
    shared_object(
        &out,
        "libother_preload.so",
        &["probes/other_preload.c"],
        &["-ldl"],
    );

    println!("cargo:rerun-if-changed={STUBS}");
    println!("cargo:rerun-if-changed=build.rs");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("OUT_DIR is valid UTF-8")
}

fn c_build() -> cc::Build {
    let mut b = cc::Build::new();
    b.std("gnu11")
        .define("_GNU_SOURCE", None)
        .warnings(true)
        .extra_warnings(true)
        .cargo_metadata(false);
    b
}

fn shared_object(out: &Path, soname: &str, sources: &[&str], link_args: &[&str]) {
    let mut build = c_build();
    build
        .pic(true)
        .flag("-fvisibility=hidden")
        .out_dir(out.join("obj").join(soname));
    for s in sources {
        build.file(Path::new(STUBS).join(s));
    }
    let objects = build.compile_intermediates();
    let mut cmd = build.get_compiler().to_command();
    // -Bsymbolic-functions: the library's references to its own functions (cuGetProcAddress's
    // table among them) bind to its own definitions, as in NVIDIA's libraries, never to a
    // preloaded library's exports of the same names.
    cmd.arg("-shared")
        .arg("-Wl,-Bsymbolic-functions")
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(out.join(soname))
        .args(&objects)
        .args(link_args);
    run(cmd, soname);
}

fn executable(out: &Path, name: &str, source: &str, args: &[&str]) {
    let compiler = c_build().get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg("-std=gnu11")
        .arg("-D_GNU_SOURCE")
        .arg("-Wall")
        .arg("-o")
        .arg(out.join(name))
        .arg(Path::new(STUBS).join(source))
        .args(args);
    run(cmd, name);
}

fn run(mut cmd: Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("building {what}: cannot run the C compiler ({e}); install gcc or clang")
    });
    assert!(status.success(), "building {what} failed: {cmd:?}");
}
