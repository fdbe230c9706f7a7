//! Compiles schema/wrun.capnp. Needs the `capnp` compiler, which
//! scripts/setup.sh installs (Debian package `capnproto`).

fn main() {
    let schema_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema");
    println!(
        "cargo:rerun-if-changed={}",
        schema_dir.join("wrun.capnp").display()
    );
    if let Err(error) = capnpc::CompilerCommand::new()
        .src_prefix(&schema_dir)
        .file(schema_dir.join("wrun.capnp"))
        .run()
    {
        panic!(
            "compiling schema/wrun.capnp failed: {error}\n\
             The Cap'n Proto compiler is needed: run scripts/setup.sh (apt-get install capnproto)."
        );
    }
}
