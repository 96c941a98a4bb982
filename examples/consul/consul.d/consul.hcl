# /etc/consul.d/consul.hcl — the same on host1, host2 and host3: three Consul servers
# (a quorum survives one host down), each also the local agent its host's referral and
# app servers talk to on 127.0.0.1:8500.
datacenter       = "dc1"
data_dir         = "/opt/consul"   # keeps registrations across agent restarts
server           = true
bootstrap_expect = 3
retry_join       = ["host1.internal", "host2.internal", "host3.internal"]
bind_addr        = "{{ GetPrivateInterfaces | attr \"address\" }}"
client_addr      = "127.0.0.1"

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}

# HTTP checks of the app servers verify their certificate with this CA
# (leave both lines out when the servers' certificate comes from a public CA).
enable_agent_tls_for_checks = true
tls {
  defaults {
    ca_file = "/etc/consul.d/affinity-ca.pem"
  }
}

limits {
  # Each referral worker holds one connection per watched service, plus two.
  http_max_conns_per_client = 400
}
