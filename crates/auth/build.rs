// The migrations are embedded by `sqlx::migrate!`; without this, adding a
// migration file would not rebuild the crate that embeds them.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
