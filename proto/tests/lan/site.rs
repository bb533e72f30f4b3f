//! A site on the virtual LAN: more servers, each on channels of its own, and a
//! director they heartbeat to.

use super::{DIRECTOR, Lan, SimServer, server_addr, server_config, site_key, site_server};
use loopcast_proto::director::Director;
use loopcast_proto::server::{DirectorLink, ServerConfig};

impl Lan {
    /// Starts a director, and has every server (those added later too) heartbeat
    /// to it; the servers are started again with `configure`.
    pub fn add_director(&mut self, configure: impl Fn(&mut ServerConfig)) {
        let key = self.key.clone();
        self.director = Some(Director::new(
            key.director_mac_key(),
            key.directory_mac_key(),
            self.now,
        ));
        let (files, now) = (self.files.clone(), self.now);
        for k in 0..self.servers.len() {
            let mut config = directed(server_config(0xa11ce + k as u32));
            configure(&mut config);
            self.servers[k].endpoint = site_server(k, config, &files, now);
        }
    }

    /// Adds server `k` (the next one) carrying the same files on channels of its
    /// own, configured by `configure`.
    pub fn add_server(&mut self, configure: impl Fn(&mut ServerConfig)) -> usize {
        let k = self.servers.len();
        let mut config = server_config(0xa11ce + k as u32);
        if self.director.is_some() {
            config = directed(config);
        }
        configure(&mut config);
        self.servers.push(SimServer {
            endpoint: site_server(k, config, &self.files, self.now),
            addr: server_addr(k),
            down: false,
        });
        k
    }
}

/// `config` heartbeating to `DIRECTOR`.
fn directed(mut config: ServerConfig) -> ServerConfig {
    config.directors = Some(DirectorLink {
        started_ms: 1_000,
        addresses: vec![DIRECTOR],
        key: site_key().director_mac_key(),
        capacity_bps: 0,
    });
    config
}
