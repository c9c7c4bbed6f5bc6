//! Compiles `proto/` into the descriptor set Pylon uses to read Envoy-native YAML.
//!
//! Upstream Envoy protos are never copied into this repository: they are taken
//! from the sources shipped inside the `envoy-types` crate, found through
//! `cargo metadata`, so the descriptor set always matches the Rust types.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = run() {
        println!("cargo:warning=pylon build script: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let envoy_types = envoy_types_dir()?;
    let upstream = envoy_types.join("proto");
    let mut includes: Vec<PathBuf> = vec![PathBuf::from("proto")];
    for sub in [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec",
        "opentelemetry-proto",
        "client_model",
    ] {
        includes.push(upstream.join(sub));
    }
    let fds = protox::compile(["pylon/v1/native.proto"], &includes)
        .map_err(|e| format!("compiling proto/: {e}"))?;
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("pylon_descriptor.bin"), bytes).map_err(|e| e.to_string())?;
    Ok(())
}

/// The unpacked source directory of the envoy-types package in this build's graph.
fn envoy_types_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(&manifest_dir)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata output: {e}"))?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let manifest = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not in the dependency graph")?;
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "envoy-types manifest has no parent".to_string())
}
