//! The Tutti operator. Its controllers arrive with the operator issue; until then the
//! binary only says so, so that nobody mistakes it for a working controller.

fn main() {
    eprintln!(
        "tutti-operator: the {}/{} controllers are not built yet",
        tutti_crds::GROUP,
        tutti_crds::VERSION
    );
    std::process::exit(2);
}
