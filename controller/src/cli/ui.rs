//! `syncfleet ui`: a one-time sign-in link to the controller's web console for this CLI's
//! operator (`CreateConsoleLogin`): no new secret, the browser's session gets the operator's
//! own identity and role.
//!
//! ```text
//! https://controller.example.com:7444/login?token=…
//! valid once, until 2026-12-06T22:45:00Z
//! ```
//!
//! `-o json`: `{"url", "expires_at"}`. With `--open` the platform's opener (`xdg-open`,
//! `open`, the Windows URL handler) is started with the link; when that fails it is a warning
//! on stderr, the link is printed all the same.

use serde_json::json;
use syncfleet_proto::v1::CreateConsoleLoginRequest;

use super::connect::Client;
use super::output::out;
use super::{CliError, EXIT_OK, OutputFormat, Session};

/// `ui`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "The console is served over HTTPS with the controller's certificate, issued by the \
                  fleet CA: the browser must trust that CA (the ca.pem of this CLI's context, \
                  see `syncfleet config current`), e.g. by importing it into the browser's or \
                  the system's trusted authorities, or the console's URL (console.url) must \
                  name a certificate the browser trusts. The link works once, for 5 minutes; \
                  the session it opens lasts console.session_lifetime (default 1h)."
)]
pub struct UiArgs {
    /// Also open the link in the default browser
    #[arg(long)]
    pub open: bool,
}

/// The program that opens a URL in the default browser on this platform.
pub fn opener(url: &str) -> std::process::Command {
    if cfg!(windows) {
        let mut c = std::process::Command::new("rundll32");
        c.args(["url.dll,FileProtocolHandler", url]);
        c
    } else if cfg!(target_os = "macos") {
        let mut c = std::process::Command::new("open");
        c.arg(url);
        c
    } else {
        let mut c = std::process::Command::new("xdg-open");
        c.arg(url);
        c
    }
}

/// Open `url` in the browser; the warning to print when that failed.
fn open_in_browser(url: &str) -> Option<String> {
    let mut cmd = opener(url);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "warning: {program} could not open the browser ({s}); open the link yourself"
        )),
        Err(e) => Some(format!(
            "warning: cannot start {program} to open the browser ({e}); open the link yourself"
        )),
    }
}

impl Session<'_> {
    pub(super) async fn ui(&self, client: &mut Client, args: &UiArgs) -> Result<u8, CliError> {
        let login = client
            .create_console_login(CreateConsoleLoginRequest {})
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        let expires = syncfleet_proto::time::rfc3339(&login.expires_at.unwrap_or_default());
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&json!({ "url": login.url, "expires_at": expires }))?;
            }
            OutputFormat::Table => {
                out(&format!("{}\nvalid once, until {expires}\n", login.url))?;
            }
        }
        if args.open
            && let Some(warning) = open_in_browser(&login.url)
        {
            eprintln!("{warning}");
        }
        Ok(EXIT_OK)
    }
}
