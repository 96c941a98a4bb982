# ACL policy for the app servers' token: register, check and put in maintenance the
# "web" service on the local agent, and read the shared settings.
service "web" {
  policy = "write"
}
key_prefix "affinity/settings/" {
  policy = "read"
}
