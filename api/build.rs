fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/authsec/v1/authsec.proto",
            "proto/authsec/v1/identity.proto",
            "proto/authsec/v1/bundle.proto",
            "proto/authsec/v1/svid.proto",
            "proto/authsec/v1/agent.proto",
            "proto/authsec/v1/audit.proto",
            "proto/spiffe/workload.proto",
            "proto/authsec/internal/v1/peer.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
