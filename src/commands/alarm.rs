//! `etcdops alarm list` / `etcdops alarm disarm`.

use crate::cli::{AlarmCommand, GlobalArgs};
use crate::error::Result;
use crate::etcd::alarm::{self, AlarmsReport};
use crate::output::{self, Render, Table};

pub fn exec(global: &GlobalArgs, cmd: AlarmCommand) -> Result<()> {
    let conn = super::given(global).resolve()?;
    let report = match cmd {
        AlarmCommand::List => super::block_on(alarm::list(&conn))?,
        AlarmCommand::Disarm => super::block_on(alarm::disarm(&conn, None))?,
    };
    output::print(super::format(global), &report);
    Ok(())
}

impl Render for AlarmsReport {
    fn table(&self) -> String {
        let mut out = String::new();
        for a in &self.disarmed {
            out.push_str(&format!(
                "disarmed: {} on member {}\n",
                a.alarm, a.member_id
            ));
        }
        if self.alarms.is_empty() {
            out.push_str("no active alarms\n");
        } else {
            let mut t = Table::new(["MEMBER", "ALARM"]);
            for a in &self.alarms {
                t.row([a.member_id.clone(), a.alarm.clone()]);
            }
            out.push_str(&t.render());
        }
        out
    }
}
