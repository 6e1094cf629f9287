// `sqlx::migrate!` embeds the migrations at compile time, but cargo does not
// know it reads that directory: without this, a new migration file is not
// picked up until something else in the crate changes, and the binaries
// start without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
