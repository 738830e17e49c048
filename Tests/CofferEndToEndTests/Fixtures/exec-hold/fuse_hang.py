# minimal FUSE server: one file "f"; FLUSH never answered (until SIGTERM)
import os, struct, ctypes, sys, signal
libc=ctypes.CDLL(None,use_errno=True)
mnt=sys.argv[1]
fd=os.open("/dev/fuse",os.O_RDWR)
opts=f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
if libc.mount(b"hangfs",mnt.encode(),b"fuse",0,opts)!=0:
    print("mount failed",ctypes.get_errno()); sys.exit(1)
print("mounted",flush=True)
def attr(ino,mode,size):
    return struct.pack("<QQQQQQIIIIIIIIII",ino,size,0,0,0,0,0,0,0,mode,1,0,0,0,4096,0)
def reply(unique,err=0,data=b""):
    os.write(fd,struct.pack("<IiQ",16+len(data),-err if err else 0,unique)+data)
pending=[]
while True:
    try: buf=os.read(fd,1<<20)
    except OSError as e:
        print("read err",e); break
    ln,op,unique,nodeid,uid,gid,pid=struct.unpack("<IIQQIII",buf[:36])
    body=buf[40:]
    if op==26: # INIT
        major,minor,ra,flags=struct.unpack("<IIII",body[:16])
        out=struct.pack("<IIIIHHIIHHII",7,31,ra,0,16,12,65536,1,32,0,0,0)+b"\0"*24
        reply(unique,0,out)
    elif op==1: # LOOKUP
        name=body.split(b"\0")[0]
        if name==b"f": reply(unique,0,struct.pack("<QQQQII",2,0,0,0,0,0)+attr(2,0o100666,5))
        else: reply(unique,2)
    elif op==3: # GETATTR
        if nodeid==1: reply(unique,0,struct.pack("<QII",0,0,0)+attr(1,0o40755,0))
        else: reply(unique,0,struct.pack("<QII",0,0,0)+attr(2,0o100666,5))
    elif op==14: reply(unique,0,struct.pack("<QII",1,0,0)) # OPEN
    elif op==27: reply(unique,0,struct.pack("<QII",1,0,0)) # OPENDIR
    elif op==25: # FLUSH: never answer
        print("FLUSH from pid",pid,flush=True); pending.append(unique)
    elif op in (18,29): reply(unique) # RELEASE/RELEASEDIR
    elif op==15: reply(unique,0,b"hello") # READ
    elif op==17: reply(unique,0,struct.pack("<QQQQQIIII",0,0,0,0,0,4096,255,4096,0)+b"\0"*24) # STATFS
    elif op==38: pass # FORGET no reply
    else: reply(unique,38)
