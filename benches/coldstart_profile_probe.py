#!/usr/bin/env python3
"""How much can a profile say about a new user's first movies? (issue: cold
start must never lose to popularity; benches/results/coldstart.md)

A linear softmax model over items, logits = log(first-item counts + 1) +
sum of one weight row per profile feature (age bracket, gender, occupation,
age x gender; with --interests also the 2 most frequent genres of the
user's items after their first 10 and the genre pair), fitted with Adam and
an L2 penalty on the training users' first 10 items. Scored against
first-item popularity on five random 30% hold-outs of MovieLens-100K users
(each held-out user's first 10 items are the truth): NDCG@10 and its ratio.
An upper bound of sorts for what a profile-conditioned recommender learns
from this data, at any L2 strength tried.

    .venv/bin/python benches/coldstart_profile_probe.py
"""
import json, random, math, collections, numpy as np, torch
import os
D=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data', 'ml-100k') + '/'
inter=json.load(open(D+'ML100K.inter.json')); users=json.load(open(D+'ML100K.user.json')); items=json.load(open(D+'ML100K.item.json'))
def bracket(a):
    for b in [18,25,35,45,50,56]:
        if a<b: return b
    return 99
def interests(seq):
    c=collections.Counter(g for i in seq[10:] for g in items[str(i)]['genres'])
    return [g for g,_ in c.most_common(2)]
def feats(u, seq, with_int):
    p=users[u]; f=['age:%d'%bracket(p['age']),'g:'+p['gender'],'o:'+p['occupation']]
    f+=['ag:%d%s'%(bracket(p['age']),p['gender'])]
    if with_int:
        ii=interests(seq); f+=['i:'+g for g in ii]+['ii:'+'|'.join(sorted(ii))]
    return f
def ndcg(rec,truth):
    t=set(truth); dcg=sum(1/math.log2(i+2) for i,x in enumerate(rec) if x in t)
    idcg=sum(1/math.log2(i+2) for i in range(min(10,len(t)))); return dcg/idcg
res=collections.defaultdict(list)
for seed in range(5):
    rnd=random.Random(seed); us=list(inter.keys()); rnd.shuffle(us); n=int(.3*len(us))
    test,train=us[:n],us[n:]
    nI=len(items)
    cnt=np.zeros(nI)
    for u in train:
        for i in inter[u][:10]: cnt[int(i)]+=1
    pop=list(np.argsort(-cnt)[:10])
    res['firstpop'].append(np.mean([ndcg(pop,[int(i) for i in inter[u][:10]]) for u in test]))
    for with_int in [False,True]:
        vocab={}
        for u in train:
            for f in feats(u,inter[u],with_int): vocab.setdefault(f,len(vocab))
        # torch: logits = b + sum_f W[f]
        torch.manual_seed(seed)
        W=torch.zeros(len(vocab),nI,requires_grad=True); b=torch.tensor(np.log(cnt+1),dtype=torch.float32).clone().requires_grad_(True)
        X=[[vocab[f] for f in feats(u,inter[u],with_int)] for u in train]
        Y=torch.zeros(len(train),nI)
        for r,u in enumerate(train):
            for i in inter[u][:10]: Y[r,int(i)]=1
        Y=Y/Y.sum(1,keepdim=True)
        M=torch.zeros(len(train),len(vocab))
        for r,x in enumerate(X): M[r,x]=1
        for wd in [1e-4,3e-4,1e-3]:
          W.data.zero_(); b.data=torch.tensor(np.log(cnt+1),dtype=torch.float32)
          opt=torch.optim.Adam([W,b],lr=0.05)
          for it in range(300):
            lo=-(torch.log_softmax(b+M@W,1)*Y).sum(1).mean()+wd*(W**2).sum()
            opt.zero_grad(); lo.backward(); opt.step()
          sc=[]
          for u in test:
            x=[vocab[f] for f in feats(u,inter[u],with_int) if f in vocab]
            s=(b+W[x].sum(0)).detach().numpy(); rec=list(np.argsort(-s)[:10])
            sc.append(ndcg(rec,[int(i) for i in inter[u][:10]]))
          res['lr int=%s wd=%g'%(with_int,wd)].append(np.mean(sc))
for k,v in res.items(): print(k, np.round(np.mean(v),4), np.round(np.mean(v)/np.mean(res['firstpop']),3))
