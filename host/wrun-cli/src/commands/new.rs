//! `wrun new NAME`: a task crate that `wrun build NAME` builds at once.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// Make a new task crate: one example task, the guest build profile, the
/// toolchain file with the wasm target, and a README. `wrun build NAME`
/// builds it.
#[derive(Debug, clap::Args)]
pub(crate) struct NewCommand {
    /// The crate's name, and the directory made for it.
    name: String,
    /// The wrun-guest crate to depend on [default: this wrun's own].
    #[arg(long, env = "WRUN_GUEST_SDK")]
    sdk: Option<PathBuf>,
}

/// The guest SDK of the checkout this wrun was built from.
const BUILT_WITH_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest-sdk/wrun-guest");
/// The toolchain the project pins (with the wasm target listed).
const TOOLCHAIN: &str = include_str!("../../../../rust-toolchain.toml");

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

impl NewCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let name = &self.name;
        if !valid_name(name) {
            return Err(Failure::input(anyhow!(
                "`{name}` is not a crate name: start with a letter, then letters, digits, `_` or `-`"
            )));
        }
        let dir = PathBuf::from(name);
        if dir.exists() {
            return Err(Failure::input(anyhow!(
                "{} exists already; pick another name",
                dir.display()
            )));
        }
        let sdk = self
            .sdk
            .clone()
            .unwrap_or_else(|| PathBuf::from(BUILT_WITH_SDK));
        let sdk = std::fs::canonicalize(&sdk).map_err(|_| {
            Failure::input(anyhow!(
                "the wrun-guest crate is not at {}: pass --sdk PATH (guest-sdk/wrun-guest of a wrun checkout)",
                sdk.display()
            ))
        })?;
        write_crate(&dir, name, &sdk).with_context(|| format!("writing {}", dir.display()))?;
        let module = name.replace('-', "_");
        outln!("made {}/: a task crate with one task, `add`", dir.display());
        outln!("  wrun build {name}");
        outln!("  wrun run {name}/target/wasm32-wasip1/release/{module}.wasm add 1 2");
        Ok(())
    }
}

fn write_crate(dir: &Path, name: &str, sdk: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wrun-guest = {{ path = "{sdk}" }}

# A task crate is its own workspace, built for wasm32-wasip1 with this profile.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#
        ),
    )?;
    std::fs::write(dir.join("rust-toolchain.toml"), TOOLCHAIN)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            r#"//! The tasks of {name}. Each `#[task]` function is one task the cluster can run.

use wrun_guest::task;

/// Adds two numbers: `wrun run MODULE add 1 2` prints 3.
#[task]
fn add(x: i64, y: i64) -> i64 {{
    x + y
}}
"#
        ),
    )?;
    let module = name.replace('-', "_");
    std::fs::write(
        dir.join("README.md"),
        format!(
            "# {name}: wrun tasks; add a `#[task]` fn to `src/lib.rs` for each task\n\
             `wrun build .` builds `target/wasm32-wasip1/release/{module}.wasm`\n\
             `wrun run target/wasm32-wasip1/release/{module}.wasm add 1 2` prints 3; `wrun submit` runs it on a cluster\n"
        ),
    )?;
    Ok(())
}
