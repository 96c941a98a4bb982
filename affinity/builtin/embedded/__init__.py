"""The embedded registry: a state file shared by the processes of one host."""
