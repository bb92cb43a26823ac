"""The hostile-input corpus: generated SMTP, MIME, CMS, certificate and payload cases run
against one in-process gateway with recording next hops.

Rule kept here: every case is data (a name, a category, what to send, the exact reply it must
get and how many messages the next hop may receive), so the corpus can grow without new test
code, and every case is checked the same way (reply, nothing relayed that should not be, the
listener still answers, a good message still goes through).
"""
