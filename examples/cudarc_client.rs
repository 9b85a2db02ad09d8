//! A client written against cudarc's driver API, unmodified: what a Rust inference engine
//! does. The tests run it on the fake GPU (LD_LIBRARY_PATH=$CUDA_STUB_DIR), with memory
//! pools on (cudarc then allocates with cuMemAllocAsync) and off (cuMemAlloc_v2).
//!
//! Usage: cudarc_client CHUNK_MIB
//! Prints: free/total memory, a host-device round trip, then allocates CHUNK_MIB chunks
//! until the driver refuses, and prints how many fit and the error.

use cudarc::driver::{CudaContext, DriverError};

fn main() -> Result<(), DriverError> {
    let chunk_mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: cudarc_client CHUNK_MIB");
    // SAFETY: only looks for the library; cudarc would panic later without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        println!("no libcuda.so found: set LD_LIBRARY_PATH");
        std::process::exit(2);
    }
    let ctx = CudaContext::new(0)?;
    let stream = ctx.default_stream();
    let (free, total) = ctx.mem_get_info()?;
    println!("info {free} {total}");

    let host: Vec<f32> = (0..(1 << 18)).map(|i| i as f32 * 0.5).collect();
    let device = stream.clone_htod(&host)?;
    let back = stream.clone_dtoh(&device)?;
    println!("roundtrip {}", if back == host { "ok" } else { "mismatch" });
    let zeros = stream.alloc_zeros::<u8>(1 << 20)?;
    let zeros_back = stream.clone_dtoh(&zeros)?;
    println!(
        "zeros {}",
        if zeros_back.iter().all(|&b| b == 0) {
            "ok"
        } else {
            "mismatch"
        }
    );
    drop((device, zeros));
    stream.synchronize()?;
    let (free, _) = ctx.mem_get_info()?;
    println!("info {free} {total}");

    let mut chunks = Vec::new();
    let error = loop {
        // SAFETY: the memory is never read before being written (it is never read at all).
        match unsafe { stream.alloc::<u8>(chunk_mib << 20) } {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => break e,
        }
    };
    println!("chunks {} then {error:?}", chunks.len());
    drop(chunks);
    stream.synchronize()?;
    let (free, _) = ctx.mem_get_info()?;
    println!("info {free} {total}");
    Ok(())
}
