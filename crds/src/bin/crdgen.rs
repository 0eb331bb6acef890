//! `crdgen`: writes the CRD YAML of every Tutti resource into `crds/` (and into the Helm
//! chart's `crds/` when the chart exists), from the Rust types.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets = [root.to_path_buf(), root.join("../charts/tutti/crds")];
    for (file, crd) in tutti_crds::crds() {
        let yaml = match tutti_crds::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &targets {
            if !dir.is_dir() {
                continue;
            }
            let path = dir.join(file);
            if let Err(err) = std::fs::write(&path, &yaml) {
                eprintln!("crdgen: {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        }
    }
    ExitCode::SUCCESS
}
