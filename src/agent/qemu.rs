//! The QEMU arguments that give a VM a region: its NBD export on a
//! virtio-blk disk carrying the region's serial, and the agent's channel.

use pmvisor_blk::nbd::ListenAddr;

use super::AgentAddr;
use crate::agent::link::BLOCK_SIZE;

/// QEMU arguments for region `export` served at `nbd`, with disk serial
/// `serial`, and its agent at `agent` (if attached). Every value is
/// escaped for QEMU's option syntax (a comma is doubled).
pub fn qemu_args(
    export: &str,
    nbd: &ListenAddr,
    serial: &str,
    agent: Option<&AgentAddr>,
) -> Vec<String> {
    // The serial is made of [A-Za-z0-9._-], so it is a valid QEMU id.
    let node = serial.to_string();
    let server = match nbd {
        ListenAddr::Unix(path) => {
            format!("server.type=unix,server.path={}", escape(&path.display().to_string()))
        }
        ListenAddr::Tcp(addr) => {
            format!("server.type=inet,server.host={},server.port={}", addr.ip(), addr.port())
        }
    };
    let mut args = vec![
        "-blockdev".to_string(),
        format!("driver=nbd,node-name={node},{server},export={}", escape(export)),
        "-device".to_string(),
        format!(
            "virtio-blk-pci,drive={node},serial={},logical_block_size={BLOCK_SIZE},\
             physical_block_size={BLOCK_SIZE},discard=on",
            escape(serial)
        ),
    ];
    match agent {
        Some(AgentAddr::Serial(path)) => args.extend([
            "-chardev".to_string(),
            format!(
                "socket,id={node}-agent,path={},server=on,wait=off",
                escape(&path.display().to_string())
            ),
            "-device".to_string(),
            format!("virtio-serial-pci,id={node}-vser"),
            "-device".to_string(),
            format!(
                "virtserialport,bus={node}-vser.0,chardev={node}-agent,name={}",
                pmvisor_agent::VIRTIO_SERIAL_PORT_NAME
            ),
        ]),
        Some(AgentAddr::Vsock { cid, .. }) => {
            args.extend(["-device".to_string(), format!("vhost-vsock-pci,guest-cid={cid}")])
        }
        Some(AgentAddr::Unix(_)) | None => {}
    }
    args
}

fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_with_a_serial_agent_gets_a_disk_and_a_virtio_serial_port() {
        let nbd = ListenAddr::Unix("/run/pmvisor/nbd/vm1.sock".into());
        let agent: AgentAddr = "serial:/run/pmvisor/agents/vm1,a.sock".parse().unwrap();
        let args = qemu_args("vm1", &nbd, "pmv-vm1", Some(&agent));
        assert_eq!(
            args,
            [
                "-blockdev",
                "driver=nbd,node-name=pmv-vm1,server.type=unix,server.path=/run/pmvisor/nbd/vm1.sock,export=vm1",
                "-device",
                "virtio-blk-pci,drive=pmv-vm1,serial=pmv-vm1,logical_block_size=4096,physical_block_size=4096,discard=on",
                "-chardev",
                "socket,id=pmv-vm1-agent,path=/run/pmvisor/agents/vm1,,a.sock,server=on,wait=off",
                "-device",
                "virtio-serial-pci,id=pmv-vm1-vser",
                "-device",
                "virtserialport,bus=pmv-vm1-vser.0,chardev=pmv-vm1-agent,name=org.pmvisor.agent.0",
            ]
        );
    }

    #[test]
    fn tcp_exports_and_vsock_agents_have_their_own_arguments() {
        let nbd = ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap());
        let agent = AgentAddr::Vsock { cid: 7, port: 20557 };
        let args = qemu_args("d", &nbd, "pmv-d", Some(&agent));
        assert!(args[1].contains("server.type=inet,server.host=127.0.0.1,server.port=10809"));
        assert_eq!(args.last().unwrap(), "vhost-vsock-pci,guest-cid=7");
        assert_eq!(qemu_args("d", &nbd, "pmv-d", None).len(), 4);
    }
}
