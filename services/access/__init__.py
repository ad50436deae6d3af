"""Who may connect to Kafka and what each principal may do: the ACL matrix, its sync, client configs."""
