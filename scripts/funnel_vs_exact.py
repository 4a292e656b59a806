"""Funnel search vs exact search on full SciFact through a running `mrl serve --allow-any-dim`.

Usage: mrl serve --allow-any-dim --data-dir /tmp/funnel --max-inputs 1000 &
       python3 scripts/funnel_vs_exact.py http://127.0.0.1:8080
Indexes ../shared/data/scifact/corpus.jsonl into collection "sci" (dims 128/256/384), then
compares the top-10 of funnel searches with exact (brute-force) search at 384 for the 300
test queries.
"""
import json,sys,urllib.request,time
A=sys.argv[1]
def call(path,body,method="POST"):
    r=urllib.request.Request(A+path,data=json.dumps(body).encode(),method=method)
    return json.loads(urllib.request.urlopen(r).read())
call("/collections/sci",{"dims":[128,256,384]},"PUT")
docs=[json.loads(l) for l in open('../shared/data/scifact/corpus.jsonl')]
t=time.time()
for i in range(0,len(docs),200):
    call("/collections/sci/documents",{"documents":[{"id":d["_id"],"text":(d["title"]+" "+d["text"]).strip()} for d in docs[i:i+200]]})
print(f"indexed {len(docs)} in {time.time()-t:.0f}s", flush=True)
qids=set(l.split('\t')[0] for l in open('../shared/data/scifact/qrels/test.tsv').read().replace('\r','').splitlines()[1:] if l)
qs=[json.loads(l) for l in open('../shared/data/scifact/queries.jsonl')]
qs=[q for q in qs if q["_id"] in qids]
ids=lambda r:[h["id"] for h in r["hits"]]
res={}
for f in [(128,100),(256,100),(128,200)]:
    same=0
    for q in qs:
        e=ids(call("/collections/sci/search",{"query":q["text"],"dim":384,"limit":10,"exact":True}))
        g=ids(call("/collections/sci/search",{"query":q["text"],"dim":384,"limit":10,"funnel":{"dim":f[0],"candidates":f[1]}}))
        same+= e==g
    print(f"funnel {f[0]}->{384} candidates {f[1]}: same top-10 as exact for {same}/{len(qs)} = {same/len(qs):.3f}", flush=True)
