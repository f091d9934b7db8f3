//! The client library's requests: opening a client-fed channel, attaching a connection to a
//! channel's shared-memory ring, and freeing what a connection held when it ends.
//!
//! The rings are `dataplane::shm` regions in sealed memfds: the submit ring of a client-fed
//! channel (created with the channel), the delivery ring of an attached receiver (created at
//! attach). The reply to `open` with `attach` and to `attach` carries their
//! fds (`SCM_RIGHTS`). The client maps the ring and says so with `mapped`: only then does the
//! daemon seal it against new writers and hole punching (`Region::seal_writers`: a punched
//! page would fault the polling core) and start using it, reading a submit ring or switching
//! the channel's receive side from the daemon's own receiver to the delivery ring. Each ring
//! belongs to one connection at a time; when that connection
//! ends (the process exited or was killed), its client-fed channels are closed per the close
//! mode with their reservations freed, and its attached receivers go back to the sink.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use control::admission::Nanos;
use control::protocol::{
    ApiError, AttachArgs, AttachRole, ErrorKind, IdArgs, OpenArgs, Reply, Request,
};
use control::reservation::not_found;
use dataplane::shm::{DeliverDesc, Params, Region};
use dataplane::wire::SourceCheck;

use super::{internal, Control, RX_RING};
use crate::daemon::server::{Caller, ConnId};

/// Requests whose replies may carry file descriptors, or that belong to their connection.
pub(super) fn carries_fds(req: &Request) -> bool {
    match req {
        Request::Open(a) => a.attach && !a.dry_run,
        Request::Attach(_) | Request::Detach(_) | Request::Mapped(_) => true,
        _ => false,
    }
}

/// A delivery ring handed to a client that has not said it mapped it yet.
#[derive(Debug)]
pub(super) struct PendingApp {
    region: Arc<Region>,
    check: SourceCheck,
}

/// A reply, the fds it carries, and whether the connection now holds daemon resources.
type FdReply = (Reply, Vec<OwnedFd>, Option<bool>);

fn busy(what: String) -> ApiError {
    ApiError::new(ErrorKind::Refused, what)
}

fn dup(fd: Option<std::os::fd::BorrowedFd<'_>>) -> Result<OwnedFd, ApiError> {
    fd.ok_or_else(|| internal("the channel has no shared-memory ring"))?
        .try_clone_to_owned()
        .map_err(|e| internal(format!("cannot duplicate the ring's fd: {e}")))
}

impl Control {
    /// The release jitter a client-fed channel is admitted with (0 for the others).
    pub(super) fn client_jitter(&self, args: &OpenArgs) -> Nanos {
        if args.attach && !args.best_effort {
            self.tx_adm.model().client_release_jitter()
        } else {
            0
        }
    }

    pub(super) fn client_with_fds(
        &mut self,
        conn: ConnId,
        _caller: Caller,
        request: Request,
    ) -> FdReply {
        let r = match request {
            Request::Open(args) => self.open_attached(conn, &args),
            Request::Attach(AttachArgs {
                id,
                role: AttachRole::Send,
            }) => self.attach_send(conn, id),
            Request::Attach(AttachArgs {
                id,
                role: AttachRole::Recv,
            }) => self.attach_recv(conn, id),
            Request::Detach(IdArgs { id }) => self.detach(conn, id).map(|r| (r, Vec::new(), None)),
            Request::Mapped(AttachArgs {
                id,
                role: AttachRole::Send,
            }) => self.mapped_send(conn, id).map(|r| (r, Vec::new(), None)),
            Request::Mapped(AttachArgs {
                id,
                role: AttachRole::Recv,
            }) => self.mapped_recv(conn, id).map(|r| (r, Vec::new(), None)),
            other => Ok((self.client(other), Vec::new(), None)),
        };
        r.unwrap_or_else(|e| (Reply::err(e), Vec::new(), None))
    }

    fn open_attached(&mut self, conn: ConnId, args: &OpenArgs) -> Result<FdReply, ApiError> {
        let info = self.open(args, None)?;
        let id = info.id;
        let fd = self
            .out
            .get(&id)
            .map(|o| dup(o.shared.region().and_then(|r| r.fd())))
            .unwrap_or_else(|| Err(not_found(id)));
        match fd {
            Ok(fd) => {
                if let Some(o) = self.out.get_mut(&id) {
                    o.conn = Some(conn);
                }
                Ok((Reply::ok(&info), vec![fd], Some(true)))
            }
            Err(e) => {
                self.teardown(id, false, true);
                self.persist(&format!(
                    "closing channel {id} (its ring could not be handed over)"
                ));
                Err(e)
            }
        }
    }

    fn attach_send(&mut self, conn: ConnId, id: u32) -> Result<FdReply, ApiError> {
        let o = self.out.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !o.args.attach {
            return Err(ApiError::invalid(
                "id",
                format!(
                    "id: channel {id} was opened without attach: its messages come from the \
                     daemon{}, not from a client",
                    o.args
                        .source
                        .as_deref()
                        .map(|s| format!(" (source '{s}')"))
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(c) = o.conn {
            return Err(busy(format!(
                "channel {id} already has a sending client (connection {c}); a channel's \
                 ring belongs to one client at a time"
            )));
        }
        let fd = dup(o.shared.region().and_then(|r| r.fd()))?;
        o.conn = Some(conn);
        Ok((Reply::ok(&o.info), vec![fd], Some(true)))
    }

    fn attach_recv(&mut self, conn: ConnId, id: u32) -> Result<FdReply, ApiError> {
        let i = self.inc.get(&id).ok_or_else(|| not_found(id))?;
        if let Some(c) = i.app {
            return Err(busy(format!(
                "channel {id} already has a receiving client (connection {c})"
            )));
        }
        if i.receiver.is_none() {
            return Err(ApiError::invalid(
                "id",
                format!("id: this host has no receive path for channel {id}"),
            ));
        }
        let core = i.core;
        if self.dp.receive_core(core).is_none() {
            return Err(internal(format!("receive core {core} is gone")));
        }
        let i = self.inc.get(&id).expect("checked above");
        let req = &i.info.admitted.request;
        let mmax = req.mmax;
        let capacity = req.bmax.saturating_mul(4).clamp(64, RX_RING);
        let region = Region::memfd::<DeliverDesc>(
            &Params {
                mmax,
                capacity,
                drop_oldest: false,
                channel: id,
            },
            &format!("rtchan-deliver-{id}"),
        )
        .map_err(|e| internal(format!("delivery ring: {e}")))?;
        let fds = vec![dup(region.fd())?];
        let check = self.source_check(&i.info.from.clone());
        // The daemon's own receiver keeps the channel until the client has mapped the ring.
        let i = self.inc.get_mut(&id).expect("checked above");
        i.app = Some(conn);
        i.pending_app = Some(PendingApp { region, check });
        Ok((Reply::ok(&i.info), fds, Some(true)))
    }

    /// The client mapped its submit ring: seal it and let the core read it. A ring that
    /// cannot be sealed (the client sealed the seals itself) closes the channel.
    fn mapped_send(&mut self, conn: ConnId, id: u32) -> Result<Reply, ApiError> {
        let o = self.out.get(&id).ok_or_else(|| not_found(id))?;
        if o.conn != Some(conn) {
            return Err(ApiError::invalid(
                "id",
                format!("id: this connection has no sending ring of channel {id}"),
            ));
        }
        if let Err(e) = o.shared.client_mapped() {
            self.teardown(id, false, true);
            self.persist(&format!(
                "closing channel {id} (its ring could not be sealed)"
            ));
            return Err(busy(format!(
                "channel {id} is closed: its ring could not be sealed against hole punching \
                 ({e})"
            )));
        }
        Ok(Reply::ok(&o.info))
    }

    /// The client mapped its delivery ring: seal it and move the channel's receive side from
    /// the daemon's receiver to it. Again after that: nothing to do.
    fn mapped_recv(&mut self, conn: ConnId, id: u32) -> Result<Reply, ApiError> {
        let i = self.inc.get_mut(&id).ok_or_else(|| not_found(id))?;
        if i.app != Some(conn) {
            return Err(ApiError::invalid(
                "id",
                format!("id: this connection has no receiving ring of channel {id}"),
            ));
        }
        let Some(PendingApp { region, check }) = i.pending_app.take() else {
            return Ok(Reply::ok(&i.info));
        };
        if let Err(e) = region.seal_writers() {
            i.app = None;
            return Err(busy(format!(
                "channel {id}'s delivery ring could not be sealed against hole punching ({e}); \
                 attach again"
            )));
        }
        let core = i.core;
        let mmax = i.info.admitted.request.mmax;
        let Some(handle) = self.dp.receive_core(core) else {
            i.app = None;
            return Err(internal(format!("receive core {core} is gone")));
        };
        if let Err(e) = handle.close_receiver(id) {
            i.app = None;
            return Err(internal(format!("receive core {core}: {e}")));
        }
        self.retire_receiver(id);
        self.sink.remove(id);
        let Some(handle) = self.dp.receive_core(core) else {
            return Err(internal(format!("receive core {core} is gone")));
        };
        let opened = handle.open_receiver_app(id, mmax, region, Some(check));
        let receiver = match opened {
            Ok(r) => r,
            Err(e) => {
                // Put the in-process receiver back so the channel keeps being received.
                let pending = handle
                    .prepare_receiver(id, mmax, RX_RING)
                    .with_source(check);
                let back = handle.open_built_receiver(pending.build()).ok();
                if let Some(r) = &back {
                    self.sink.add(id, r.clone());
                }
                if let Some(i) = self.inc.get_mut(&id) {
                    i.receiver = back;
                    i.app = None;
                }
                return Err(internal(format!("receive core {core}: {e}")));
            }
        };
        let i = self.inc.get_mut(&id).expect("checked above");
        i.receiver = Some(receiver);
        Ok(Reply::ok(&i.info))
    }

    /// Gives an attached receiver back to the sink.
    fn detach(&mut self, conn: ConnId, id: u32) -> Result<Reply, ApiError> {
        match self.inc.get(&id) {
            Some(i) if i.app == Some(conn) => {
                self.detach_receiver(id);
                Ok(Reply::ok(serde_json::json!({})))
            }
            Some(_) => Err(ApiError::invalid(
                "id",
                format!("id: this connection has no receiving ring of channel {id}"),
            )),
            None => Err(not_found(id)),
        }
    }

    fn detach_receiver(&mut self, id: u32) {
        let Some(i) = self.inc.get_mut(&id) else {
            return;
        };
        i.app = None;
        if i.pending_app.take().is_some() {
            // Never switched: the daemon's own receiver still has the channel.
            return;
        }
        if let Some(r) = i.receiver.as_ref().and_then(|r| r.shared().app_region()) {
            r.close();
        }
        let core = i.core;
        let mmax = i.info.admitted.request.mmax;
        let Some(handle) = self.dp.receive_core(core) else {
            return;
        };
        let _ = handle.close_receiver(id);
        self.retire_receiver(id);
        let Some(handle) = self.dp.receive_core(core) else {
            return;
        };
        let r = handle.open_receiver(id, mmax, RX_RING).ok();
        if let Some(r) = &r {
            self.sink.add(id, r.clone());
        }
        if let Some(i) = self.inc.get_mut(&id) {
            i.receiver = r;
        }
    }

    /// The current receive side of `id` is closed on its core and about to be replaced: keep
    /// its final counters (with those carried before) for the channel's statistics.
    fn retire_receiver(&mut self, id: u32) {
        let counters = self
            .inc
            .get(&id)
            .and_then(|i| i.receiver.as_ref())
            .map(|r| self.rx_counters(id, r));
        if let (Some(c), Some(i)) = (counters, self.inc.get_mut(&id)) {
            i.carried = Some(c);
        }
    }

    /// A control-socket connection ended: close its client-fed channels (per the close mode,
    /// reservations freed on both hosts) and give its receivers back to the sink.
    pub(super) fn client_closed(&mut self, conn: ConnId) {
        let ids: Vec<u32> = self
            .out
            .iter()
            .filter(|(_, o)| o.conn == Some(conn))
            .map(|(&id, _)| id)
            .collect();
        let drain = self.policy.close == "drain";
        for &id in &ids {
            self.teardown(id, drain, true);
        }
        if !ids.is_empty() {
            eprintln!(
                "rtchand: a client went away: closed its channels {ids:?} and freed their \
                 reservations"
            );
            self.persist("closing the channels of a client that went away");
        }
        let rx: Vec<u32> = self
            .inc
            .iter()
            .filter(|(_, i)| i.app == Some(conn))
            .map(|(&id, _)| id)
            .collect();
        for id in rx {
            self.detach_receiver(id);
        }
    }
}
