# ACL policy for the referrals' token: read every service and node, write the KV prefix
# (drain flags and shared settings written through the admin API).
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key_prefix "affinity/" {
  policy = "write"
}
