//! One ledger per core: where a polling core both sends and receives (af_packet, AF_XDP,
//! DPDK: `Dataplane::receives_on_sending_cores`), the sending controller (`tx_adm`) and the
//! receiving one (`rx_adm`) each book the other's channels on that core
//! (`Admission::add_shared`), so every admission test on the core counts all the work it runs.
//! Where receiving runs on cores of its own (memlink's loopback receive cores) nothing is
//! shared. Every admission and release of the daemon goes through these four calls.

use control::admission::{AdmitError, Admitted, ChannelRequest};

use super::Control;

impl Control {
    /// Admits a sending channel on `tx_adm`, booked on `rx_adm` too where its core receives.
    pub(super) fn admit_sending(&mut self, req: &ChannelRequest) -> Result<Admitted, AdmitError> {
        let a = self.tx_adm.admit(req)?;
        if self.dp.receives_on_sending_cores() {
            if let Some(r) = self.tx_adm.cpu_reservation(a.id) {
                // The core exists on both: one [[cores]] entry each.
                let _ = self.rx_adm.add_shared(a.id, r);
            }
        }
        Ok(a)
    }

    /// Releases what [`Self::admit_sending`] reserved.
    pub(super) fn release_sending(&mut self, adm_id: u32) {
        let _ = self.tx_adm.release(adm_id);
        self.rx_adm.remove_shared(adm_id);
    }

    /// Admits a receiving channel on `rx_adm`, booked on `tx_adm` too where its core sends.
    pub(super) fn admit_receiving(&mut self, req: &ChannelRequest) -> Result<Admitted, AdmitError> {
        let a = self.rx_adm.admit(req)?;
        if self.dp.receives_on_sending_cores() {
            if let Some(r) = self.rx_adm.cpu_reservation(a.id) {
                let _ = self.tx_adm.add_shared(a.id, r);
            }
        }
        Ok(a)
    }

    /// Releases what [`Self::admit_receiving`] reserved.
    pub(super) fn release_receiving(&mut self, adm_id: u32) {
        let _ = self.rx_adm.release(adm_id);
        self.tx_adm.remove_shared(adm_id);
    }
}
