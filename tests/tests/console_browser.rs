//! The web console in a real headless Chromium.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

#[path = "common/browser.rs"]
mod browser;
mod common;

#[test]
fn harness_opens_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let b = browser::Browser::start("probe", &[], dir.path());
    b.goto("data:text/html,<main><h1 data-testid=x>hello</h1></main>");
    b.wait_text("the heading", "[data-testid=x]", "hello");
    let p = b.screenshot("probe");
    println!("{}", p.display());
}
