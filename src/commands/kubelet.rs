//! `etcdops kubelet stop|start|status`: the configured kubelet commands, as the migration
//! runs them.

use crate::cli::{GlobalArgs, KubeletAction, KubeletArgs};
use crate::error::{Error, Result};

pub fn exec(global: &GlobalArgs, args: KubeletArgs) -> Result<()> {
    let kubelet = super::kubelet_commands(global);
    match args.action {
        KubeletAction::Stop => kubelet.stop(),
        KubeletAction::Start => kubelet.start(),
        KubeletAction::Status => {
            if kubelet.is_active()? {
                println!("active");
                Ok(())
            } else {
                println!("inactive");
                Err(Error::refused(
                    "kubelet",
                    format!("inactive (`{}` exited non-zero)", kubelet.status),
                ))
            }
        }
    }
}
