# The retrain job's Consul token: model pointers, their history and the promotion locks, all under
# caravan/models/. A session lock needs a session (session write on the agent's node, which may be any).
key_prefix "caravan/models/" {
  policy = "write"
}

session_prefix "" {
  policy = "write"
}
