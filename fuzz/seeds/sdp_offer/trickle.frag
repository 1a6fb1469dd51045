a=ice-ufrag:abcd
a=ice-pwd:x
m=audio 9 RTP/AVP 0
a=mid:0
a=candidate:1 1 UDP 2130706431 192.0.2.1 5000 typ host
a=end-of-candidates
