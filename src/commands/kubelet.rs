//! `etcdops kubelet stop|start|status`: the configured kubelet commands, as the migration
//! runs them.

use serde::Serialize;

use crate::cli::{GlobalArgs, KubeletAction, KubeletArgs};
use crate::error::{Error, Result};
use crate::output::{self, Render};

#[derive(Serialize)]
struct KubeletReport {
    action: &'static str,
    /// `active` or `inactive` after the action.
    kubelet: &'static str,
}

impl Render for KubeletReport {
    fn table(&self) -> String {
        format!("{}\n", self.kubelet)
    }
}

pub fn exec(global: &GlobalArgs, args: KubeletArgs) -> Result<()> {
    let kubelet = super::kubelet_commands(global);
    let format = super::format(global);
    let say = super::say(format);
    let action = match args.action {
        KubeletAction::Stop => {
            kubelet.stop(&say)?;
            "stop"
        }
        KubeletAction::Start => {
            kubelet.start(&say)?;
            "start"
        }
        KubeletAction::Status => "status",
    };
    let active = kubelet.is_active()?;
    let report = KubeletReport {
        action,
        kubelet: if active { "active" } else { "inactive" },
    };
    output::print(format, &report);
    if action == "status" && !active {
        return Err(Error::refused(
            "kubelet",
            format!("inactive (`{}` exited non-zero)", kubelet.status),
        ));
    }
    Ok(())
}
