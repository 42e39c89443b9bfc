//! Generates Rust code for the Cap'n Proto schemas at build time (needs the `capnp` tool).
fn main() {
    println!("cargo:rerun-if-changed=schema/tunnel.capnp");
    println!("cargo:rerun-if-changed=schema/binding.capnp");
    if let Err(e) = capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/tunnel.capnp")
        .file("schema/binding.capnp")
        .run()
    {
        panic!(
            "compiling the Cap'n Proto schemas failed: {e}\n\
             The Cap'n Proto compiler is needed: run ./scripts/setup.sh (or apt-get install capnproto)."
        );
    }
}
