"""Hand-written per-topic keyword lists (one per `warm_data.TOPICS` entry) for the quickstart's gold judge.

Inflections are spelled out, since matching is by exact lower-case word; a reply that uses two of its topic's
keywords is on topic.
"""

from __future__ import annotations

KEYWORDS: dict[str, frozenset[str]] = {
    "weeknight cooking": frozenset("""cook cooks cooking dinner dinners meal weeknight weeknights recipes ingredient
        ingredients staples pantry pasta rice eggs beans chop chopped roasting sauce sauces spices leftovers batch
        takeout kitchen pan chicken oven""".split()),
    "baking bread": frozenset("""bread breads loaf loaves dough flour yeast knead kneading kneaded rise rises rising
        proof proofing oven bake bakes baking baked crust sourdough starter recipe salt lukewarm scale slice slicing
        crumb dense""".split()),
    "healthy eating": frozenset("""healthy healthier eat eating diet diets balanced nutrition nutritious vegetables
        veggies fruit fruits protein fiber snack snacks snacking soda sugar sugary processed plate plates portion
        portions meals lunch fridge hungry swap swaps breakfast""".split()),
    "starting running": frozenset("""run runs running runner runners jog jogs jogging jogger pace paced race races
        mile miles distance intervals interval walking shoes stride injury injuries shin splints conversational
        treadmill marathon laps sneakers""".split()),
    "home strength training": frozenset("""strength strong squat squats push pushups glute bridges plank planks
        lunges reps repetitions sets muscle muscles workout workouts weights dumbbell dumbbells bodyweight exercise
        exercises core gym equipment resistance weight sessions""".split()),
    "studying for exams": frozenset("""study studying studied exam exams test tests revision revise revising cram
        cramming recall memory memorize memorise pomodoro subjects syllabus finals quiz quizzes textbook textbooks
        lecture lectures grades material rereading concepts explain explaining understanding""".split()),
    "learning a language": frozenset("""language languages spanish french italian japanese german vocabulary grammar
        fluent fluency native speakers speaking conversation tutor tutors phrase phrases subtitles flashcards
        duolingo pronunciation accent immersion translate translation lessons spaced repetition""".split()),
    "budgeting": frozenset("""budget budgets budgeting money spend spent income expenses expense bills bill savings
        save saving paycheck payday rent emergency fund subscriptions subscription bank account accounts track
        tracking categories cash spreadsheet purchase purchases""".split()),
    "paying off debt": frozenset("""debt debts credit card cards balance balances interest rate rates minimum
        payment payments pay paying owe owed loan loans avalanche snowball fees fee lender lenders consolidate
        consolidation apr introductory payoff transfer""".split()),
    "budget travel": frozenset("""travel traveling travelling trip trips flight flights fare fares airfare book
        booking booked hotel hotels hostel hostels guesthouse guesthouses destination destinations season peak
        shoulder crowds airline airlines cheap cheaper deals alerts itinerary budget vacation holiday""".split()),
    "packing light": frozenset("""pack packs packing packed luggage suitcase suitcases bag bags carry cubes clothes
        outfit outfits toiletries laundry checklist roll rolling jacket layers plane overpack overpacking liquids
        wardrobe essentials backpack trip travel palette tops bottoms""".split()),
    "houseplants": frozenset("""plant plants houseplant houseplants water watering watered overwatering overwater
        soil pot pots potting drainage leaves leaf yellow yellowing window sunlight pothos monstera succulent
        succulents fertilizer repot repotting humidity indoor""".split()),
    "vegetable garden": frozenset("""garden gardens gardening vegetable vegetables grow growing grown crop crops
        seed seeds seedlings tomato tomatoes lettuce radishes zucchini compost mulch weeds weeding harvest planting
        sun sunny raised balcony backyard watering deeply""".split()),
    "puppy training": frozenset("""puppy puppies dog dogs train trained training leash walks bite biting chew
        chewing sit command commands crate potty accidents praise reward rewards rewarding obedience bark barking
        heel vet""".split()),
    "cat care": frozenset("""cat cats kitten kittens litter scratch scratching scratcher furniture couch claws wand
        toy toys hide hiding treats feline purr purring vet scoop rescue indoor catnip perch shy""".split()),
    "slow laptop": frozenset("""laptop laptops computer computers pc slow slower speed faster reboot rebooting
        startup programs program disk storage ssd ram updates uninstall uninstalling uninstalled malware virus
        antivirus browser processes cpu software hardware freezes freezing""".split()),
    "wifi trouble": frozenset("""wifi router routers modem signal internet connection ethernet cable wired mesh
        extender bandwidth network networks streaming firmware channel band ghz interference microwaves unplug
        unplugging isp provider walls reset restart""".split()),
    "phone photos backup": frozenset("""backup backups backed cloud photos pictures storage drive external copy
        copies duplicates delete albums album library icloud sync syncing synced upload uploaded device devices
        memories phone""".split()),
    "work stress": frozenset("""stress stressful workload workloads manager managers priorities prioritize
        prioritizing deadline deadlines burnout burned boundaries boundary overtime unwind unwinding ritual shift
        shifts coworkers workday tasks delegate delegating job stretch""".split()),
    "job interview": frozenset("""interview interviews interviewer interviewers interviewing company role roles
        hiring hire employer star situation action result behavioral questions answer candidate candidates position
        mirror recruiter recruiters strengths weaknesses weakness job""".split()),
    "asking for a raise": frozenset("""raise raises salary salaries pay paid underpaid negotiate negotiating
        negotiation boss manager achievements accomplishments compensation market number performance promotion worth
        offer offers counteroffer revisit research impact""".split()),
    "making friends": frozenset("""friends friend friendship friendships meet meetup meetups club clubs social
        acquaintances coffee invite invitation lonely loneliness interests hobby hobbies conversations connect
        meeting befriend bond bonding outgoing socialize socializing chatting""".split()),
    "friendship conflict": frozenset("""friend friends friendship apologize apologise apology apologizing argument
        arguments hurt blame blaming statements listen listening forgive forgiveness reconnect reconnecting
        misunderstanding conflict upset mend mending repair perspective side conversation coffee""".split()),
    "moving city": frozenset("""city cities town neighborhood neighborhoods neighbors explore exploring local locals
        move moved moving relocate relocating relocation unpack unpacking decorate decorating cozy homesick familiar
        faces cafe shop library settle settling settled connections""".split()),
    "sleep": frozenset("""sleep sleeping slept asleep sleepy insomnia bed bedtime bedroom caffeine nap naps dark
        quiet awake rested melatonin mattress pillow screens tired wake""".split()),
    "public speaking": frozenset("""speech speeches speaking speak speaker presentation presentations present
        presenting audience slides rehearse rehearsing rehearsal nerves stage podium toast script opening lines
        voice pause pauses microphone deliver delivery breathe breathing crowd""".split()),
    "learning guitar": frozenset("""guitar guitars chord chords strum strumming fret frets fretboard fingers
        fingertips string strings tune tuning tuner acoustic electric song songs playing metronome calluses capo
        pick picking rhythm tabs sessions minor""".split()),
    "drawing": frozenset("""draw draws drawing drawings drew drawn sketch sketches sketching sketchbook pencil
        pencils shading shade shapes shape proportions perspective gesture gestures portrait portraits art artist
        artists illustrate illustration paper ink eraser anatomy""".split()),
    "phone photography": frozenset("""photo photos photography photograph photographs picture pictures camera lens
        shot shots shoot shooting light lighting flash exposure brightness grid thirds composition angle angles edit
        editing blur portrait zoom filters filter screen""".split()),
    "reading more": frozenset("""read reads reading reader readers book books novel novels pages page chapter
        chapters audiobook audiobooks kindle ereader librarian libraries genre genres author authors fiction
        nonfiction bookstore recommendations club commute""".split()),
    "decluttering": frozenset("""declutter decluttering clutter cluttered tidy tidying tidied mess messy clean
        cleaning cleaned organize organized organizing donate donating donation throw trash drawer drawers closet
        closets shelves belongings stuff items bins boxes dishes""".split()),
    "procrastination": frozenset("""procrastinate procrastinating procrastination avoiding delay delaying timer
        pomodoro task tasks distraction distractions distracted focus focused focusing deadline motivation chunk
        chunks reward perfectionism accountability productive productivity tiny phone""".split()),
    "morning routine": frozenset("""morning mornings alarm alarms wake waking woke snooze snoozing bedtime breakfast
        routine routines sunlight early earlier shower stretching rushed rush riser clothes glass""".split()),
    "mindfulness": frozenset("""meditate meditating meditation meditations mindful mindfulness breath breathing
        present relax relaxing relaxed relaxation thoughts wander wanders wandering judge judging guided tense
        tension sensations noticing awareness smells inhale exhale attention""".split()),
    "resume and cover letter": frozenset("""resume resumes cv cover letter letters application applications apply
        applying posting postings keywords tailor tailored tailoring achievements experience skills headings
        proofread proofreading typos typo format formatting recruiter employer hiring template writing""".split()),
    "hosting dinner": frozenset("""host hosting hosted guest guests party parties dinner menu menus dish dishes
        appetizer appetizers dessert desserts drinks wine table allergies allergy dietary invite invited lasagna
        stew roast snacks potluck candles napkins cook cooking""".split()),
    "gifts and birthdays": frozenset("""gift gifts birthday birthdays presents surprise surprises celebrating
        celebration party card cards heartfelt experience concert tickets picnic cake thoughtful wrap wrapping
        wishlist memory memories handmade personalized balloons candles""".split()),
    "cycling to work": frozenset("""bike bikes bicycle cycle cycling cyclist cyclists ride riding rider commute
        commuting helmet lights traffic lane lanes route routes tire tires brakes brake gears gear lock locks
        drivers junctions intersections pedal pedaling sweaty shirt signal""".split()),
    "remote work": frozenset("""remote remotely office offices workspace desk desks chair ergonomic monitor screen
        colleagues coworkers isolated isolation lunch video calls dedicated setup posture wfh
        productive""".split()),
    "learning to code": frozenset("""code coding coder program programming programmer python javascript syntax error
        errors bug bugs debug debugging git github projects functions function variables loops tutorials tutorial
        developer software script computer language""".split()),
    "family keeping in touch": frozenset("""family families parents siblings grandparents grandma grandpa relatives
        mom dad call calls calling chat messages message voice letters mail mailed packages package distance apart
        visit visits visiting touch miss missing handwritten postcards""".split()),
    "homework help for kids": frozenset("""homework child children kid kids son daughter school teacher teachers
        math grade grades assignment assignments worksheet spelling parent desk supplies praise struggling tutor
        guide chunks""".split()),
    "volunteering": frozenset("""volunteer volunteers volunteering volunteered cause causes charity charities
        nonprofit nonprofits organization organizations community communities shelter shelters banks donate
        mentoring mentor tutoring service giving opportunities opportunity events retired animals purpose skills
        event committing""".split()),
    "journaling": frozenset("""journal journals journaling journalling journaled entry entries notebook pen prompts
        prompt gratitude grateful reflect reflecting reflection thoughts emotions emotion diary writing wrote
        written jot jotting bedside grammar""".split()),
    "beginner hiking": frozenset("""hike hikes hiking hiked hiker hikers trail trails trailhead elevation map maps
        boots shoes grip layers rain weather daylight route backpack outdoors outdoor nature summit mountain
        mountains woods blisters""".split()),
}
